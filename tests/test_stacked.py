"""Stacked runs (train/stacked.py) train exactly as the same runs trained one by one.

Three runs of a tiny model that differ in seed, learning rate, weight decay and clipping, three
steps of their own batches: the stacked step's per-run losses, learning rates and final states
must equal those of train/step.py's single-run step with train/optimizer.py's optimizer of each
run. A step that applied run 0's learning rate (or decay, or clip) to every run, mixed up the
runs' batches or seeds, or dropped the schedule, fails here.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import transformer
from model.config import ModelConfig
from train import optimizer as optimizer_lib
from train import stacked
from train import step as step_lib
from train.config import SCHEDULES, ConfigError, TrainSettings

STEPS, BATCH, SEQ, VOCAB = 3, 4, 16, 64
CFG = ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=64,
                  max_seq_len=SEQ, dtype="float32")
BASE = TrainSettings(steps=STEPS, batch_size=BATCH, warmup_steps=1)
# (seed, lr, weight decay, clip): every per-run setting differs between the runs.
RUNS = [dataclasses.replace(BASE, seed=s, lr=lr, weight_decay=wd, grad_clip=c)
        for s, lr, wd, c in [(0, 1e-3, 0.0, 1.0), (1, 1e-2, 0.1, 1.0), (2, 3e-2, 0.3, 0.05)]]


def _separate(t: TrainSettings, batches_SxBxL1) -> tuple[dict, list[dict]]:
  """One run alone: its final TrainState and metrics per step (train/step.py, jitted)."""
  graphdef, params = transformer.create(CFG, jax.random.key(t.seed))
  tx = optimizer_lib.make(t, t.steps)
  step = jax.jit(step_lib.make_train_step(
      step_lib.lm_loss(graphdef, -1), tx, grad_accum=1,
      lr_schedule=optimizer_lib.schedule_for(t, t.steps)))
  state, history = step_lib.init_state(params, tx, t.seed), []
  for batch in batches_SxBxL1:
    state, metrics = step(state, batch)
    history.append(metrics)
  return state, history


def _stacked(batches_SxRxBxL1, vmap_width: int):
  training = stacked.make_stacked_training(CFG, RUNS, pad_id=-1, vmap_width=vmap_width)
  state, history = training.init(), []
  for batch in batches_SxRxBxL1:
    state, metrics = training.train_step(state, batch)
    history.append(metrics)
  return training, state, history


@pytest.fixture(scope="module")
def batches():
  # Each run its own data: batches (steps, R, B, L+1).
  return jax.random.randint(jax.random.key(7), (STEPS, len(RUNS), BATCH, SEQ + 1), 0, VOCAB)


@pytest.fixture(scope="module")
def separate(batches):
  return [_separate(t, batches[:, i]) for i, t in enumerate(RUNS)]


@pytest.fixture(scope="module")
def trained(batches, separate):
  return (*_stacked(batches, vmap_width=0), separate)


def _assert_equal_to_separate(training, state, history, separate):
  for i, (alone, alone_history) in enumerate(separate):
    for k, alone_metrics in enumerate(alone_history):
      for name in ("loss", "lr", "grad_norm"):
        np.testing.assert_allclose(history[k][name][i], alone_metrics[name], rtol=1e-5,
                                   err_msg=f"run {i} step {k} {name}")
    mine = training.run_state(state, i)
    assert jax.tree.structure(mine) == jax.tree.structure(alone)  # saves as that run's checkpoint
    for path, a, b in zip(jax.tree_util.tree_leaves_with_path(mine), jax.tree.leaves(mine),
                          jax.tree.leaves(alone)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6, err_msg=f"run {i} {path[0]}")


def test_stacked_runs_equal_separate_runs(trained):
  _assert_equal_to_separate(*trained)


def test_runs_one_after_another_in_one_program_equal_separate_runs(batches, separate):
  """vmap_width=1 (jax.lax.map over the runs, the CPU's choice) is the same training."""
  _assert_equal_to_separate(*_stacked(batches, vmap_width=1), separate)


def test_runs_actually_differ(trained):
  """The comparison above has teeth: the runs' final parameters are far apart (a step that gave
  every run one setting could not match all three separate runs)."""
  _, state, _, _ = trained
  leaves = [np.asarray(x) for x in jax.tree.leaves(state["params"])]
  for i, j in [(0, 1), (1, 2), (0, 2)]:
    assert max(np.max(np.abs(x[i] - x[j])) for x in leaves) > 1e-3


def test_stack_unstack_round_trip(trained):
  training, state, _, _ = trained
  runs = [training.run_state(state, i) for i in range(stacked.num_runs(state))]
  restacked = stacked.stack(runs)
  assert jax.tree.structure(restacked) == jax.tree.structure(state)
  assert all(bool(jnp.array_equal(a, b))
             for a, b in zip(jax.tree.leaves(restacked), jax.tree.leaves(state)))


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_schedule_is_peak_lr_times_a_shape(schedule):
  """run_optimizer multiplies the lr-1 schedule by each run's lr: true of every train.schedule."""
  t = dataclasses.replace(BASE, steps=20, warmup_steps=3, schedule=schedule, decay_fraction=0.3)
  steps = jnp.arange(21)
  unit = optimizer_lib.schedule_for(dataclasses.replace(t, lr=1.0), t.steps)(steps)
  for lr in (3e-4, 0.02):
    direct = optimizer_lib.schedule_for(dataclasses.replace(t, lr=lr), t.steps)(steps)
    np.testing.assert_allclose(lr * unit, direct, rtol=1e-6, atol=1e-12)


def test_runs_that_differ_elsewhere_are_refused():
  with pytest.raises(ConfigError, match="train.steps differs"):
    stacked.check_stackable([BASE, dataclasses.replace(BASE, steps=STEPS + 1)])
  with pytest.raises(ConfigError, match="at least one run"):
    stacked.check_stackable([])
  with pytest.raises(ConfigError, match="vmap_width=4"):
    stacked.make_stacked_training(CFG, RUNS, pad_id=-1, vmap_width=4)
  stacked.check_stackable(RUNS)  # seed, lr, weight decay and clip may differ
