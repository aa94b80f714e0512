"""Pretraining of a group of stacked runs: train/pretrain.py's train() for R workdirs in one process
and one compiled step (train/stacked.py).

The runs' configs are equal except in train/stacked.py's PER_RUN settings (seed, lr, weight
decay, clip). Each run keeps its own workdir exactly as train() writes it alone: its config.json,
tokenizer and shards, its data order (its seed's row iterator), metrics.jsonl and curves.png, its
checkpoints (unstacked, train/stacked.py run_state: each restores as that run alone) and the
summary train() returns. What is shared: the one compiled train step (jax.vmap over the runs)
and one evaluation per due step that scores every run's parameters on the same held-out
batches (the runs read the same data, so their held-out rows are the same).

Resuming: each run restores its newest checkpoint. Runs stopped together (a signal saves every
run at the same step) go on together; runs found at different steps (a kill between two runs'
saves) train as one stack per start step, one after another.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from model import transformer
from model.config import count_params, flops_per_token
from train import checkpoint as ckpt_lib
from train import config as config_lib
from train import metrics as metrics_lib
from train import mfu as mfu_lib
from train import pretrain
from train import stacked
from train import step as step_lib
from train import workdir_lock
from train.data import pipeline as data_lib
from train.loop import Hooks, run_steps
from train.state import make_sharded_training


def _without_per_run(config: ml_collections.ConfigDict) -> dict:
  d = config.to_dict()
  d["train"] = {k: v for k, v in d["train"].items() if k not in stacked.PER_RUN}
  return d


def check_group(configs: Sequence[ml_collections.ConfigDict],
                settings: Sequence[config_lib.RunSettings]) -> None:
  """ConfigError in one line when the runs cannot train as one stack: a setting outside PER_RUN
  differs, a run branches from another (train.init_from) or the model is MoE. (The stack trains
  on one device whatever sharding.mesh says; the runs' checkpoints restore onto any mesh.)"""
  stacked.check_stackable([s.train for s in settings])
  first = _without_per_run(configs[0])
  for i, c in enumerate(configs[1:], start=1):
    for section, values in _without_per_run(c).items():
      if values != first.get(section):
        raise config_lib.ConfigError(
            f"{section}.* differs between stacked runs (run 0 and run {i}); only train."
            f"{', train.'.join(stacked.PER_RUN)} may differ")
  if settings[0].train.init_from:
    raise config_lib.ConfigError("train.init_from: branched runs train alone, not stacked")
  if settings[0].model.moe.n_experts:
    raise config_lib.ConfigError("model.moe.n_experts > 0: MoE runs train alone, not stacked")


@dataclasses.dataclass
class Member:
  """One run of the group: its workdir, settings, data, checkpointer and where it starts."""

  workdir: str
  settings: config_lib.RunSettings
  data: pretrain.PretrainData
  ckpt: ckpt_lib.Checkpointer
  start: int
  state: Any  # its restored TrainState, or None for a fresh run
  row_ids: Any


def open_member(config: ml_collections.ConfigDict, workdir: str,
                settings: config_lib.RunSettings) -> Member:
  """The run's data prepared and config.json saved (pretrain.prepare_data), its newest checkpoint
  restored (None: a fresh run, created stacked later)."""
  mesh = pretrain.build_mesh(settings)
  data = pretrain.prepare_data(config, workdir, settings, mesh)
  t = settings.train
  abstract = make_sharded_training(settings.model, t, mesh, settings.sharding.zero_stage,
                                   pad_id=data.pad_id, documents=data.documents,
                                   answer_marker=data.answer_marker).abstract_state
  ckpt = ckpt_lib.Checkpointer.of(os.path.join(workdir, "checkpoints"), settings.checkpoint)
  row_ids = data_lib.train_iterator([r.n_rows for r in data.corpus.train], data.corpus.weights,
                                    t.batch_size, t.seed)
  found = ckpt.restore_latest(abstract)
  if found is None:
    return Member(workdir, settings, data, ckpt, 0, None, row_ids)
  start, state, data_state = found
  row_ids.set_state(data_state)
  return Member(workdir, settings, data, ckpt, start, state, row_ids)


class GroupEval:
  """Every run's held-out losses from one vmapped evaluation of the stacked parameters, computed
  at most once per (parameters, split): set() gives the new parameters, record(prefix, i) run i's
  {PREFIX_loss, ...} as pretrain.heldout_record writes it."""

  def __init__(self, member: Member):
    data, t = member.data, member.settings.train
    graphdef, _ = transformer.abstract(member.settings.model)
    one = step_lib.make_eval_metrics_step(graphdef, pad_id=data.pad_id, documents=data.documents,
                                          answer_marker=data.answer_marker)
    self._step = jax.jit(jax.vmap(one, in_axes=(0, None)))
    self._val = data.corpus.val
    val_ids, test_ids = data_lib.heldout_indices(self._val.n_rows, t.batch_size, t.eval_batches,
                                                 t.test_batches)
    self._ids = {"eval": val_ids, "test": test_ids}
    self._params, self._cache = None, {}

  def set(self, params_R: Any) -> None:
    self._params, self._cache = params_R, {}

  def _compute(self, prefix: str) -> list[dict]:
    totals, count_R = {}, 0
    for ids in self._ids[prefix]:
      loss_sum_R, n_R, sums = self._step(self._params, jnp.asarray(self._val.read(ids)))
      count_R = count_R + np.asarray(n_R, np.int64)
      for name, value in {"loss": loss_sum_R, **sums}.items():
        totals[name] = totals.get(name, 0.0) + np.asarray(value, np.float64)
    runs = len(count_R)
    return [pretrain.heldout_record(prefix, {k: v[i] / max(int(count_R[i]), 1)
                                             for k, v in totals.items()}) for i in range(runs)]

  def record(self, prefix: str, i: int) -> dict:
    if prefix not in self._cache:
      self._cache[prefix] = self._compute(prefix)
    return self._cache[prefix][i]


class SharedMeter(pretrain.Meter):
  """One pretrain.Meter for every run of a stack (each run's tokens over the stack's time), read
  once per step: the first run's reading is every run's, so a later run's rate does not hold the
  evaluation an earlier run's report just ran."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self._step, self._reading = -1, {}

  def read(self, step: int) -> dict[str, float]:
    if step != self._step:
      self._step, self._reading = step, super().read(step)
    return self._reading


def _reporter(member: Member, i: int, group_eval: GroupEval,
              meter: SharedMeter) -> pretrain.Reporter:
  """pretrain.Reporter of run i: its own metrics.jsonl and checkpointer; the stack's meter; its
  evaluations read from the group's."""
  t = member.settings.train
  writer = metrics_lib.MetricsWriter(member.workdir, t.loggers, dataclasses.asdict(member.settings))
  bar = tqdm(total=t.steps, initial=member.start, disable=True)
  test = (lambda _params: group_eval.record("test", i)) if t.test_batches else None
  return pretrain.Reporter(t, meter, lambda _params: group_eval.record("eval", i), writer, bar,
                           member.ckpt, test)


def _hooks(members: Sequence[Member], reporters: Sequence[pretrain.Reporter],
           group_eval: GroupEval) -> Hooks:
  """loop.Hooks over the stacked state: each run reports its slice of the step's metrics into
  its own workdir and saves its slice of the state as its own checkpoint."""
  t = members[0].settings.train

  def report(step: int, metrics: dict, state: Any) -> list[dict]:
    host = jax.device_get(metrics)  # one transfer for every run's metrics
    group_eval.set(state["params"])
    return [rep(step, {k: v[i] for k, v in host.items()}, {"params": None})
            for i, rep in enumerate(reporters)]

  def save(step: int, state: Any, early: bool, temporary: bool = False) -> None:
    del early
    for i, m in enumerate(members):
      m.ckpt.save(step, stacked.unstack(state, i), m.row_ids.get_state(), temporary=temporary)
    reporters[0].meter.restart()  # the stack's one meter; nor is saving training

  return Hooks(
      report=report, save=save, must_save=members[0].settings.checkpoint.must_save,
      read_now=lambda step: step % t.eval_every == 0,
      temporary_due=members[0].ckpt.temporary_due,
      save_temporary=lambda step, state: save(step, state, False, temporary=True),
      wait_saved=lambda: [m.ckpt.wait() for m in members])


def vmap_width_for(backend: str) -> int:
  """train/stacked.py's vmap_width for a backend: on a CPU the runs one after another inside the
  one program (1: a whole-R vmap ran at 0.58x the separate runs' tokens/s there,
  results/stacked_runs/vmap_all), elsewhere all at once (0)."""
  return 1 if backend == "cpu" else 0


def _initial_state(members: Sequence[Member], training: stacked.StackedTraining) -> Any:
  if members[0].state is None:  # fresh runs: each created from its own seed, then stacked
    return training.init()
  # Restored onto the run's own mesh; the stack lives on one device, as its batches do.
  return jax.device_put(stacked.stack([m.state for m in members]), jax.devices()[0])


def train_stack(members: Sequence[Member]) -> list[dict[str, Any]]:
  """Steps runs that start at one step together, from there to train.steps; each run's summary
  as pretrain.run_training returns it."""
  s0, start = members[0].settings, members[0].start
  d = members[0].data
  training = stacked.make_stacked_training(
      s0.model, [m.settings.train for m in members], pad_id=d.pad_id, documents=d.documents,
      answer_marker=d.answer_marker, vmap_width=vmap_width_for(jax.default_backend()))
  group_eval = GroupEval(members[0])
  seq_len = s0.data.seq_len
  meter = SharedMeter(s0.train.batch_size * seq_len, flops_per_token(s0.model, seq_len),
                      mfu_lib.peak_flops() * jax.device_count())
  reporters = [_reporter(m, i, group_eval, meter) for i, m in enumerate(members)]

  def train_step_at(step: int, state):
    meter.count(step)
    batch_RxBxL1 = np.stack([m.data.corpus.train_rows.read(next(m.row_ids)) for m in members])
    return training.train_step(state, jnp.asarray(batch_RxBxL1))

  try:
    state, step, signalled, _ = run_steps(
        _initial_state(members, training), start, s0.train.steps, train_step_at,
        _hooks(members, reporters, group_eval))
  finally:
    for m, rep in zip(members, reporters):
      rep.writer.close()
      m.ckpt.close()
  out = []
  for m, rep in zip(members, reporters):
    summary = {"start_step": start, "params": count_params(s0.model),
               "unigram_entropy": m.data.corpus.unigram_entropy,
               "rows_read_per_step": s0.train.batch_size, **rep.latest, "final_step": step}
    if signalled is not None:
      summary["stopped_by_signal"] = signalled
    if "jsonl" in s0.train.loggers:
      pretrain.write_curves(m.workdir)
    out.append(summary)
  return out


def train_group(configs: Sequence[ml_collections.ConfigDict],
                workdirs: Sequence[str]) -> list[dict[str, Any]]:
  """pretrain.train(configs[i], workdirs[i]) for every i, the runs stacked; their summaries in
  order. ConfigError (check_group) before anything is written when they cannot stack."""
  if len(configs) != len(workdirs) or not configs:
    raise ValueError("train_group needs one workdir per config, at least one")
  settings = [pretrain.resolve_settings(c, w) for c, w in zip(configs, workdirs)]
  check_group(configs, settings)
  with contextlib.ExitStack() as held:
    for w in workdirs:
      held.enter_context(workdir_lock.hold(w))
    members = [open_member(c, w, s) for c, w, s in zip(configs, workdirs, settings)]
    print(f"stacked: {len(members)} runs, starting at steps "
          f"{sorted({m.start for m in members})}, in one compiled step", flush=True)
    by_workdir: dict[str, dict] = {}
    order = sorted(range(len(members)), key=lambda i: members[i].start)
    for _, group in itertools.groupby(order, key=lambda i: members[i].start):
      mine = [members[i] for i in group]
      by_workdir.update(zip([m.workdir for m in mine], train_stack(mine)))
      if any(s.get("stopped_by_signal") for s in by_workdir.values()):
        break  # a signal stops the group; the rest resume next time
    for m in members:
      if m.workdir not in by_workdir:
        m.ckpt.close()  # a run left for next time (train_stack closed the others')
  return [by_workdir.get(w, {"final_step": 0, "stopped_by_signal": "group stopped"})
          for w in workdirs]
