"""Many small runs trained at once: R runs of one model shape in one process and one compiled step.

A learning-rate sweep or a muP transfer plot is dozens of runs of a model so small that each
step is mostly fixed cost (dispatch, tiny kernels). Runs that share the model and every train.*
setting except the optimizer's floats and the seed are stacked instead: every leaf of their
TrainStates gains a leading run axis R, and jax.vmap maps train/step.py's own step over it. Each
run keeps its own

  seed          its model's initialisation and its state's PRNG key (init_state), as if alone;
                its data order is the caller's: batches come stacked per run, (R, B, L+1)
  lr, weight_decay, grad_clip
                passed into the compiled step as traced (R,) arrays (STACKED_HPARAMS), so one
                compilation serves every value; train.schedule, warmup and muP multipliers are
                train/optimizer.py's, built from the run's values inside the step

and every metric comes out per run, (R,). The optimizer is train/optimizer.py `make` itself, so
a run's optimizer state has the single run's layout, and unstack(state, i) is the TrainState
that run would have had alone: it saves and restores as that run's checkpoint. The stacked
step runs on one device (the R axis is not sharded over a mesh here).
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from model import transformer
from model.config import ModelConfig
from train import optimizer as optimizer_lib
from train import step as step_lib
from train.config import ConfigError, TrainSettings

# The train.* settings in which stacked runs may differ: the optimizer's floats, traced per run,
# and the seed (initialisation and PRNG key).
STACKED_HPARAMS = ("lr", "weight_decay", "grad_clip")
PER_RUN = STACKED_HPARAMS + ("seed",)


def check_stackable(runs: Sequence[TrainSettings]) -> None:
  """ConfigError naming the first train.* setting, other than PER_RUN, in which a run differs
  from the first run: such runs need separate compiled steps."""
  if not runs:
    raise ConfigError("stacked training needs at least one run")
  first = dataclasses.asdict(runs[0])
  for i, run in enumerate(runs[1:], start=1):
    for name, value in dataclasses.asdict(run).items():
      if name not in PER_RUN and value != first[name]:
        raise ConfigError(
            f"train.{name} differs between stacked runs (run 0: {first[name]!r}, run {i}: "
            f"{value!r}); only {', '.join(PER_RUN)} may differ")


def hparam_arrays(runs: Sequence[TrainSettings]) -> dict[str, jax.Array]:
  """{name: (R,) float32} of STACKED_HPARAMS, the stacked step's per-run argument."""
  return {name: jnp.asarray([getattr(r, name) for r in runs], jnp.float32)
          for name in STACKED_HPARAMS}


def _traced_settings(t: TrainSettings, hp: dict[str, jax.Array]) -> Any:
  """t with one run's traced hp values, as train/optimizer.py reads it (attributes only).

  A stand-in rather than a TrainSettings: the dataclass validates its numbers in Python
  (lr > 0), which a tracer cannot answer; the values were validated as the runs' TrainSettings.
  """
  fields = {f.name: getattr(t, f.name) for f in dataclasses.fields(t)}
  return types.SimpleNamespace(**{**fields, **hp})


def run_optimizer(t: TrainSettings, hp: dict[str, jax.Array]
                  ) -> tuple[optax.GradientTransformation, Callable[[jax.Array], jax.Array]]:
  """(optimizer, learning-rate schedule) of one run whose STACKED_HPARAMS are hp (traced
  scalars): train/optimizer.py `make` and `schedule_for` at lr 1 and the run's weight decay and
  clip, the updates and the schedule multiplied by the run's lr.

  Why by a factor: optax's schedules branch in Python on their peak value, which a tracer cannot
  answer. Every train.schedule is the peak lr times a shape (warmup from 0, cosine to lr / 10,
  WSD to 0, constant; a test checks it), and AdamW's update is the schedule times the rest, so
  the product equals the run's own optimizer up to float rounding. The state is make's own.
  """
  unit = _traced_settings(t, {**hp, "lr": 1.0})
  inner = optimizer_lib.make(unit, t.steps)
  shape = optimizer_lib.schedule_for(unit, t.steps)
  lr = hp["lr"]

  def update(updates, state, params=None):
    updates, state = inner.update(updates, state, params)
    return jax.tree.map(lambda u: u * lr.astype(u.dtype), updates), state

  return optax.GradientTransformation(inner.init, update), lambda count: lr * shape(count)


def run_step(loss_fn: step_lib.LossFn, t: TrainSettings, hp: dict[str, jax.Array]) -> Callable:
  """train/step.py's train_step(state, batch) for one run whose STACKED_HPARAMS are hp (scalars,
  traced), with run_optimizer's optimizer."""
  tx, lr_schedule = run_optimizer(t, hp)
  return step_lib.make_train_step(loss_fn, tx, grad_accum=t.grad_accum, lr_schedule=lr_schedule)


def stack(trees: Sequence[Any]) -> Any:
  """Trees of one structure -> one tree whose leaves gain a leading run axis R = len(trees)."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack(tree: Any, i: int) -> Any:
  """Run i's tree out of a stacked one: a TrainState from a stacked state, (metric: scalar) from
  stacked metrics."""
  return jax.tree.map(lambda x: x[i], tree)


def num_runs(tree: Any) -> int:
  """R, the leading axis of a stacked tree."""
  return int(jax.tree.leaves(tree)[0].shape[0])


@dataclasses.dataclass(frozen=True)
class StackedTraining:
  """R stacked runs' settings and the jitted functions that create and step them."""

  runs: tuple[TrainSettings, ...]  # each run's own train.* settings, validated
  graphdef: Any
  init: Callable[[], step_lib.TrainState]  # () -> the stacked state, leaves (R, ...)
  # (stacked state, batch (R, B, L+1)) -> (stacked state, metrics {name: (R,)}); donates the state
  train_step: Callable[[step_lib.TrainState, jax.Array], tuple[step_lib.TrainState, dict]]

  def run_state(self, state: step_lib.TrainState, i: int) -> step_lib.TrainState:
    """Run i's TrainState, as train/checkpoint.py would save it for that run alone."""
    return unstack(state, i)


def make_stacked_training(
    model_cfg: ModelConfig, runs: Sequence[TrainSettings], *, pad_id: int,
    documents: step_lib.Documents = None, answer_marker: Optional[int] = None,
    vmap_width: int = 0,
) -> StackedTraining:
  """Pretraining's step (lm_loss, as train/state.py make_sharded_training builds it) for runs
  that differ only in PER_RUN settings (check_stackable), vmapped over the runs.

  The per-run STACKED_HPARAMS are bound as a jit argument, so the step compiles once for R runs;
  init creates every run's state from its own seed exactly as a single run does, then stacks.

  vmap_width: how many runs one pass of the compiled step computes together (jax.lax.map's
  batch_size over the runs): 0 = all R in one vmap, the accelerator's choice (R times the work
  per kernel launch); 1 = the runs one after another inside the one program, each op the single
  run's size, which on a CPU keeps the working set in cache (a whole-R vmap of a ~100k-parameter
  model ran slower per token there than the runs alone: docs/training.md).
  """
  runs = tuple(runs)
  check_stackable(runs)
  if not 0 <= vmap_width <= len(runs):
    raise ConfigError(f"vmap_width={vmap_width} must be in [0, {len(runs)}] (0: every run at once)")
  t = runs[0]
  graphdef, _ = transformer.abstract(model_cfg)
  loss_fn = step_lib.lm_loss(
      graphdef, pad_id, (model_cfg.moe.aux_loss_weight, model_cfg.moe.z_loss_weight), documents,
      answer_marker, t.z_loss)
  tx = optimizer_lib.make(t, t.steps)  # init only: Adam's state does not depend on the values

  def init_one(seed: jax.Array) -> step_lib.TrainState:  # as train/step.py makes a run alone
    return step_lib.init_state(transformer.create(model_cfg, jax.random.key(seed))[1], tx, seed)

  # One compiled single-run creation called per seed, then stacked: eagerly, every op of the
  # model's creation compiled alone; a jit of R creations compiles R copies; and a vmap over the
  # seeds compiled about 3x slower than one run's creation (8 runs of the benchmark model, CPU).
  init_one_jit = jax.jit(init_one)
  stack_jit = jax.jit(lambda states: stack(states))

  def init() -> step_lib.TrainState:
    return stack_jit([init_one_jit(jnp.int32(r.seed)) for r in runs])

  def one_run(args):
    state, batch_BxL1, hp = args
    return run_step(loss_fn, t, hp)(state, batch_BxL1)

  def stacked_step(state, batch_RxBxL1, hp):
    if vmap_width in (0, len(runs)):
      return jax.vmap(one_run)((state, batch_RxBxL1, hp))
    return jax.lax.map(one_run, (state, batch_RxBxL1, hp), batch_size=vmap_width)

  hp = hparam_arrays(runs)
  step = jax.jit(stacked_step, donate_argnums=0)
  return StackedTraining(
      runs=runs, graphdef=graphdef, init=init,
      train_step=lambda state, batch: step(state, batch, hp))
