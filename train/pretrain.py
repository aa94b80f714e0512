"""Pretraining: config -> mesh -> data -> sharded state (fresh or restored) -> steps -> summary.

train() runs these stages in order, each a function below. Rerunning with the same workdir
resumes from the newest readable checkpoint; losses are then bit-identical (on CPU) to a run that
never stopped, because the state, the PRNG key and the data iterator's position are all restored.
SIGTERM / SIGINT finish the current step, save and return normally (train/loop.py's run_steps).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable, Optional, Sequence

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tokenizers import Tokenizer
from tqdm import tqdm

from model import transformer
from model.config import ModelConfig, count_params, flops_per_token
from sharding import mesh as mesh_lib
from sharding import rules as rules_lib
from train import banner
from train import branch as branch_lib
from train import checkpoint as ckpt_lib
from train import config as config_lib
from train import eval_tasks as eval_tasks_lib
from train import kl_distill
from train import metrics as metrics_lib
from train import mfu as mfu_lib
from train import plots
from train import step as step_lib
from train import workdir_lock
from train.data import pipeline as data_lib
from train.data import tokenizer as tokenizer_lib
from train.loop import (
    Hooks, NonFiniteLoss, Profile, check_memory, local_rows, profile_in, rows_batch, run_steps,
    validate_sharding)
from train.state import ShardedTraining, make_sharded_training


class Meter:
  """Training throughput between two readings: tokens per second, seconds per step, MFU.

  count(done) before each step is dispatched; read(step) at each step's report returns the rates
  over the steps reported since the last reading (their time: from that reading to this one,
  which waits for the step to finish) and starts the next interval; restart() starts it afresh
  after work that is not training (an evaluation, a checkpoint save). The first interval of an
  invocation starts at its first count(), so the first step's reading holds the step's
  compilation: every reported step has a rate, and the first one says what the start cost.
  """

  def __init__(self, tokens_per_step: int, train_flops_per_token: float, peak_flops: float):
    """train_flops_per_token: model.config.flops_per_token; peak_flops: of all devices."""
    self.tokens_per_step = tokens_per_step
    self.train_flops_per_token = train_flops_per_token
    self.peak_flops = peak_flops
    self._since: Optional[float] = None
    self._read = 0  # the step of the last reading (or where the invocation started)

  def count(self, done: int) -> None:
    """done: the steps finished before the one about to be dispatched."""
    if self._since is None:
      self._since, self._read = time.perf_counter(), done

  def restart(self) -> None:
    self._since = time.perf_counter()

  def read(self, step: int) -> dict[str, float]:
    """{"tokens_per_sec", "step_time_s", "mfu"} over the steps after the last reading up to
    `step`, since that reading or a restart; {} when there is none."""
    now = time.perf_counter()
    steps = step - self._read
    if self._since is None or steps <= 0:
      return {}
    seconds = now - self._since
    tokens_per_sec = steps * self.tokens_per_step / seconds
    self._since, self._read = now, step
    return {"tokens_per_sec": tokens_per_sec, "step_time_s": seconds / steps,
            "mfu": self.train_flops_per_token * tokens_per_sec / self.peak_flops}


@dataclasses.dataclass(frozen=True)
class PretrainData:
  """The prepared corpus and what the step needs to know of its tokenizer."""

  corpus: data_lib.Corpus
  tokenizer: Tokenizer
  pad_id: int
  documents: step_lib.Documents  # packed documents never attend to each other
  answer_marker: Optional[int]


def answer_marker_id(tok: Tokenizer, marker: str) -> Optional[int]:
  """The token id of train.answer_marker, None when it is unset; ConfigError unless the tokenizer
  reads it as exactly one token."""
  if not marker:
    return None
  ids = tokenizer_lib.encode(tok, marker)
  if len(ids) != 1:
    raise config_lib.ConfigError(
        f"train.answer_marker={marker!r} is {len(ids)} tokens in this tokenizer; it must be one")
  return ids[0]


def resolve_settings(config: ml_collections.ConfigDict, workdir: str) -> config_lib.RunSettings:
  """Validated and typed once; past this point the ConfigDict is only compared with, and saved
  as, the workdir's config.json."""
  run_settings = config_lib.resolve(config)
  distill = run_settings.distill
  if distill.enabled and not os.path.exists(os.path.join(distill.target_workdir, "config.json")):
    raise config_lib.ConfigError(
        f"distill.target_workdir={distill.target_workdir} holds no trained run (no config.json)")
  config_lib.check_workdir(workdir, config)
  check_data_unchanged(workdir, config, run_settings.data)
  return run_settings


def check_data_unchanged(workdir: str, config: ml_collections.ConfigDict,
                         data_settings: config_lib.DataSettings) -> None:
  """Refuses, in one line, to resume a workdir that has trained (a checkpoint past step 0) on
  other data than data.* now names (config_lib.data_diffs): its shards would be made again and
  its validation set would change under the run. data.allow_change=True allows it. A workdir
  with no training yet (an imported model's step 0) takes any data."""
  saved = config_lib.read_saved(workdir)
  if saved is None or data_settings.allow_change:
    return
  diffs = config_lib.data_diffs(saved, config)
  if diffs and max(ckpt_lib.saved_steps(os.path.join(workdir, "checkpoints")), default=0) > 0:
    raise config_lib.ConfigError(
        f"workdir {workdir} trained on other data ({'; '.join(diffs)}); use a new --workdir, "
        "or --config.data.allow_change=True to go on with this data")


def build_mesh(run_settings: config_lib.RunSettings) -> Mesh:
  """The run's mesh, checked against the model and the batch (one-line MeshError)."""
  mesh = mesh_lib.make_mesh(run_settings.sharding.mesh)
  validate_sharding(run_settings.train, run_settings.sharding, run_settings.model, mesh)
  return mesh


@dataclasses.dataclass(frozen=True)
class Preflight:
  """What preflight() found: each source's files, the memory check's verdict (None: off), and
  train.eval_tasks' tasks, read and checked (eval_tasks.read_tasks)."""

  files: list[list[str]]
  memory: Optional[str]
  tasks: list = dataclasses.field(default_factory=list)


def preflight(run_settings: config_lib.RunSettings, mesh: Mesh) -> Preflight:
  """The data sources and the compiled step's memory, checked before any data is read or any
  file is written: a bad file or a step that does not fit is one line, not a late failure."""
  model_cfg, t, data_settings = run_settings.model, run_settings.train, run_settings.data
  files = data_lib.check_sources(data_settings)
  tasks = eval_tasks_lib.read_tasks(t.eval_tasks, t.eval_tasks_max_items)
  distill = run_settings.distill
  batch = (kl_distill.abstract_batch(t.batch_size, data_settings.seq_len, distill.top_k,
                                     model_cfg.vocab_size) if distill.enabled
           else jax.ShapeDtypeStruct((t.batch_size, data_settings.seq_len + 1), np.int32))
  memory = check_memory(  # pad_id changes no byte of the step; the document mask adds a few
      run_settings.sharding, lambda stage: make_sharded_training(
          model_cfg, t, mesh, stage, pad_id=-1, documents=(-1, False), distill=distill), batch)
  return Preflight(files=files, memory=memory, tasks=tasks)


def _prepare_everywhere(prepare: Callable[[], data_lib.Prepared]) -> data_lib.Prepared:
  """prepare() on every process: process 0 first (it trains the tokenizer and writes the
  shards), then the others, which reuse them."""
  if jax.process_count() == 1:
    return prepare()
  if jax.process_index() == 0:
    prepared = prepare()
  multihost_utils.sync_global_devices("llmlab: data prepared")
  if jax.process_index() != 0:
    prepared = prepare()
  return prepared


def prepare_data(config: ml_collections.ConfigDict, workdir: str,
                 run_settings: config_lib.RunSettings, mesh: Optional[Mesh] = None) -> PretrainData:
  """Tokenizer and shards in workdir (made once, reused on resume), the corpus opened, and the
  config saved as workdir/config.json (with the mesh and devices it runs on, when given)."""
  model_cfg, t, data_settings = run_settings.model, run_settings.train, run_settings.data
  os.makedirs(workdir, exist_ok=True)
  prepared = _prepare_everywhere(functools.partial(
      data_lib.prepare, workdir, data_settings, progress=jax.process_index() == 0))
  tok = prepared.tokenizer
  corpus = data_lib.open_corpus(prepared, data_settings.seq_len, t.batch_size)
  if tok.get_vocab_size() > model_cfg.vocab_size:
    raise config_lib.ConfigError(
        f"the tokenizer in {workdir} has {tok.get_vocab_size()} tokens but model.vocab_size="
        f"{model_cfg.vocab_size}; raise model.vocab_size or use a new --workdir")
  data = PretrainData(
      corpus=corpus, tokenizer=tok, pad_id=tokenizer_lib.special_id(tok, tokenizer_lib.PAD),
      documents=tokenizer_lib.document_boundary(tok),
      answer_marker=answer_marker_id(tok, t.answer_marker))
  if jax.process_index() == 0:
    config_lib.save(workdir, config, banner.resolved_record(mesh) if mesh is not None else None)
  return data


def build_training(run_settings: config_lib.RunSettings, mesh: Mesh,
                   data: PretrainData) -> ShardedTraining:
  """Model and optimizer state, initialised directly in its sharded layout, and the step."""
  return make_sharded_training(
      run_settings.model, run_settings.train, mesh, run_settings.sharding.zero_stage,
      pad_id=data.pad_id, documents=data.documents, answer_marker=data.answer_marker,
      distill=run_settings.distill)


def start_teacher(run_settings: config_lib.RunSettings, data: PretrainData,
                  training: ShardedTraining) -> Optional[Callable[[Any], Any]]:
  """None without distillation; else batch(rows) -> kl_distill's batch: the target run of
  distill.target_workdir loaded (its parameters replicated on the mesh, frozen) and its top-k
  computed over the rows by a jitted forward pass. ConfigError when the target's tokenizer or
  vocabulary is not this run's."""
  distill = run_settings.distill
  if not distill.enabled:
    return None
  from train.saved_run import load_run

  target = distill.target_workdir
  tcfg, tdef, tparams, ttok = load_run(target)
  if ttok.to_str() != data.tokenizer.to_str():
    raise config_lib.ConfigError(
        f"distill.target_workdir={target} has another tokenizer than this run; copy its "
        "tokenizer.json into a new --workdir before the first step")
  if tcfg.vocab_size != run_settings.model.vocab_size:
    raise config_lib.ConfigError(
        f"distill.target_workdir={target} has model.vocab_size={tcfg.vocab_size}; set "
        f"model.vocab_size={tcfg.vocab_size}")
  tparams = jax.device_put(tparams, rules_lib.replicated(training.mesh))
  teacher = jax.jit(kl_distill.make_teacher(tdef, distill.top_k, data.documents),
                    out_shardings=training.batch_sharding)
  return lambda rows: teacher(tparams, rows)


def restore_or_init(ckpt: ckpt_lib.Checkpointer, training: ShardedTraining, data: PretrainData,
                    t: config_lib.TrainSettings, parent: Optional[branch_lib.Parent] = None,
                    workdir: str = "") -> tuple[int, Any, Any]:
  """(start step, state, row-id iterator): the newest checkpoint's; else, for a new branch
  (train.init_from, `parent` from branch.start), the parent's at its step; else a fresh state at
  step 0.

  The iterator yields the global batch's row ids on every process: one iterator, one state to
  checkpoint; each process then reads only its own rows (rows_batch).
  """
  corpus = data.corpus
  row_ids = data_lib.train_iterator(
      [r.n_rows for r in corpus.train], corpus.weights, t.batch_size, t.seed)
  try:
    restored = branch_lib.restore(ckpt, training.abstract_state, parent, workdir)
  except ckpt_lib.UnreadableCheckpoints:
    ckpt.close()
    raise
  if restored is None:
    return 0, training.init(jax.random.key(t.seed)), row_ids
  start, state, data_state = restored
  row_ids.set_state(data_state)
  return start, state, row_ids


def make_evaluators(training: ShardedTraining, data: PretrainData, t: config_lib.TrainSettings,
                    model_cfg: Optional[ModelConfig] = None,
                    ) -> tuple[Callable[[Any], dict], Optional[Callable[[Any], dict]]]:
  """(evaluate, evaluate_test): each params -> {"eval_loss" or "test_loss": mean loss per token,
  and for an MoE model "eval/moe/drop_fraction", ... (the router metrics, means per token)} over
  fixed held-out batches, train.eval_batches of the validation rows and train.test_batches of the
  test rows (data_lib.heldout_indices keeps the two apart); evaluate_test is None without a test
  split. MoE layers evaluate with model.moe.eval_dispatch (model_cfg.for_eval()); where that
  differs from training's dispatch, evaluate_test also scores the test rows with training's
  ("test_train_dispatch_loss", "test_train_dispatch/moe/..."), the evaluation-dispatch ablation."""
  def compiled(graphdef):
    return jax.jit(step_lib.make_eval_metrics_step(
        graphdef, pad_id=data.pad_id, documents=data.documents, answer_marker=data.answer_marker),
        in_shardings=(training.shardings.params, training.batch_sharding))

  eval_cfg = model_cfg.for_eval() if model_cfg is not None else None
  own_dispatch = eval_cfg is not None and eval_cfg != model_cfg
  eval_step = compiled(transformer.abstract(eval_cfg)[0] if own_dispatch else training.graphdef)
  val = data.corpus.val
  val_ids, test_ids = data_lib.heldout_indices(val.n_rows, t.batch_size, t.eval_batches,
                                               t.test_batches)

  def over(batches: list[np.ndarray], prefix: str, step) -> Callable[[Any], dict]:
    def evaluate(params) -> dict:
      totals, count = {}, 0
      for ids in batches:
        loss_sum, n, sums = step(params, rows_batch(val, ids, training.batch_sharding))
        count += int(n)
        for name, value in {"loss": loss_sum, **sums}.items():
          totals[name] = totals.get(name, 0.0) + np.asarray(value, np.float64)
      return heldout_record(prefix, {k: v / max(count, 1) for k, v in totals.items()})
    return evaluate

  if not test_ids:
    return over(val_ids, "eval", eval_step), None
  test = over(test_ids, "test", eval_step)
  if own_dispatch:
    test_as_trained = over(test_ids, "test_train_dispatch", compiled(training.graphdef))
    return over(val_ids, "eval", eval_step), lambda params: {**test(params),
                                                             **test_as_trained(params)}
  return over(val_ids, "eval", eval_step), test


def heldout_record(prefix: str, means: dict) -> dict:
  """{PREFIX_loss, PREFIX/moe/NAME, PREFIX/moe/expert_share/I}: held-out means as logged."""
  out = {}
  for name, value in means.items():
    key = f"{prefix}_loss" if name == "loss" else f"{prefix}/{name}"
    if np.ndim(value):
      out.update({f"{key}/{i}": float(v) for i, v in enumerate(value)})
    else:
      out[key] = float(value)
  return out


class Reporter:
  """Pretraining's report hook (loop.Hooks.report): reads a step's metrics back (one step late,
  so the device is never idle), evaluates when due, writes metrics.jsonl and the progress bar.
  latest: the newest step, loss and eval_loss, for the run's summary."""

  def __init__(self, t: config_lib.TrainSettings, meter: Meter, evaluate: Callable[[Any], dict],
               writer: metrics_lib.MetricsWriter, bar: tqdm, ckpt: ckpt_lib.Checkpointer,
               evaluate_test: Optional[Callable[[Any], dict]] = None,
               evaluate_tasks: Optional[Callable[[Any], dict]] = None):
    """evaluate_tasks: params -> train.eval_tasks' task/... record (eval_tasks.LiveTasks), at
    every evaluation."""
    self.t, self.meter, self.evaluate, self.evaluate_test = t, meter, evaluate, evaluate_test
    self.evaluate_tasks = evaluate_tasks
    self.writer, self.bar, self.ckpt = writer, bar, ckpt
    self.latest: dict[str, Any] = {}

  def record(self, step: int, metrics: dict) -> dict:
    """The step's metrics as floats (MoE vectors one entry per expert) and the throughput;
    NonFiniteLoss when the loss is NaN or Inf."""
    loss = float(metrics["loss"])
    if not np.isfinite(loss):
      raise NonFiniteLoss(
          f"loss is {loss} at step {step}; stopped without saving, the last good checkpoint "
          f"({max(self.ckpt.steps(), default='none')}) is untouched. Lower train.lr or raise "
          "train.warmup_steps")
    record = {"loss": loss, "lr": float(metrics["lr"]), "grad_norm": float(metrics["grad_norm"]),
              "tokens_seen": step * self.meter.tokens_per_step, "time": time.time()}
    for name, value in metrics.items():
      if name.startswith(("moe/", "distill/")) or name == "z_loss":  # router losses, drop fraction, experts' shares
        value = np.asarray(value)
        if value.ndim:
          record.update({f"{name}/{i}": float(v) for i, v in enumerate(value)})
        else:
          record[name] = float(value)
    record.update(self.meter.read(step))
    self.latest.update(step=step, loss=loss)
    return record

  def __call__(self, step: int, metrics: dict, state: Any) -> dict:
    t = self.t
    record = self.record(step, metrics)
    if step % t.eval_every == 0 or step == t.steps:
      record.update(self.evaluate(state["params"]))
      self.latest["eval_loss"] = record["eval_loss"]
      if self.evaluate_tasks is not None:
        record.update(self.evaluate_tasks(state["params"]))
      if step == t.steps and self.evaluate_test is not None:
        test = self.evaluate_test(state["params"])
        record.update(test)
        self.latest.update({k: v for k, v in test.items() if k.endswith("_loss")})
      self.meter.restart()  # evaluation time is not training throughput
    if step % t.log_every == 0 or "eval_loss" in record or step == t.steps:
      self.writer.write(step, record)
      if self.writer.enabled:
        self.bar.write(metrics_lib.console_line(step, record))
    postfix = {"loss": f"{record['loss']:.3f}"}
    if "tokens_per_sec" in record:
      postfix["tok/s"] = f"{record['tokens_per_sec']:.0f}"
    self.bar.set_postfix(postfix, refresh=False)
    self.bar.update(step - self.bar.n)
    return record


def make_hooks(run_settings: config_lib.RunSettings, reporter: Reporter,
               ckpt: ckpt_lib.Checkpointer, row_ids: Any) -> Hooks:
  """Report every step (evaluation steps at once), save every checkpoint.every_steps (and a
  temporary checkpoint every checkpoint.every_minutes) with the data iterator's position beside
  the state."""
  t = run_settings.train

  def save(step: int, state, early: bool, temporary: bool = False) -> None:
    del early  # pretraining has no stop condition
    ckpt.save(step, state, row_ids.get_state(), temporary=temporary)
    reporter.meter.restart()  # nor is saving

  return Hooks(
      report=reporter, save=save,
      must_save=run_settings.checkpoint.must_save,
      read_now=lambda step: step % t.eval_every == 0,
      temporary_due=ckpt.temporary_due,
      save_temporary=lambda step, state: save(step, state, False, temporary=True),
      wait_saved=ckpt.wait)


def train(config: ml_collections.ConfigDict, workdir: str,
          profile_steps: Optional[tuple[int, int]] = None) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`. Returns a summary of the final step.

  profile_steps: (first, last) steps traced into <workdir>/profile (loop.Profile), or None.

  config: the experiment's ConfigDict, turned into typed settings once (train/config.resolve).
  config.sharding.mesh and config.sharding.zero_stage say where the state lives; any mesh and
  stage resume any checkpoint of the same model.
  """
  run_settings = resolve_settings(config, workdir)
  # One run per workdir (held by process 0 for the whole run, released however it ends): a
  # second run on it stops here with one line naming the holder.
  with workdir_lock.hold(workdir, enabled=jax.process_index() == 0):
    parent = branch_lib.start(workdir, config, run_settings.train)  # train.init_from, or None
    mesh = build_mesh(run_settings)
    checked = preflight(run_settings, mesh)
    data = prepare_data(config, workdir, run_settings, mesh)
    training = build_training(run_settings, mesh, data)
    teacher = start_teacher(run_settings, data, training)
    ckpt = ckpt_lib.Checkpointer.of(os.path.join(workdir, "checkpoints"), run_settings.checkpoint)
    start, state, row_ids = restore_or_init(ckpt, training, data, run_settings.train, parent,
                                            workdir)
    branched = parent is not None and start == parent.step and not ckpt.steps()
    banner.show(banner.lines(
        run_settings, workdir, mesh, files=checked.files, memory=checked.memory,
        start=banner.start_text(start, parent.workdir if branched else None), corpus=data.corpus))
    return run_training(run_settings, workdir, training, data, ckpt, start, state, row_ids,
                        profile_in(workdir, profile_steps), checked.tasks, teacher)


def dry_run(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """What train() does before its first step, short of writing anything: the settings checked,
  the mesh built, the data sources and the memory pre-flight checked, the banner printed (where
  the run would start is read from the workdir's checkpoints and train.init_from). No tokenizer,
  shard, config.json, lock or checkpoint is written. Returns the banner's lines."""
  run_settings = resolve_settings(config, workdir)
  parent = branch_lib.check_parent(workdir, config, run_settings.train)  # reads files only
  mesh = build_mesh(run_settings)
  checked = preflight(run_settings, mesh)
  saved = ckpt_lib.saved_steps(os.path.join(workdir, "checkpoints"))
  if saved:
    start = banner.start_text(max(saved))
  else:
    start = banner.start_text(parent.step, parent.workdir) if parent else banner.start_text(0)
  lines = banner.lines(run_settings, workdir, mesh, files=checked.files, memory=checked.memory,
                       start=start) + ["dry run: stopped before preparing data and training"]
  banner.show(lines)
  return lines


def run_training(run_settings: config_lib.RunSettings, workdir: str, training: ShardedTraining,
                 data: PretrainData, ckpt: ckpt_lib.Checkpointer, start: int, state: Any,
                 row_ids: Any, profile: Optional[Profile] = None,
                 tasks: Sequence = (), teacher: Optional[Callable[[Any], Any]] = None,
                 ) -> dict[str, Any]:
  """Steps from `start` to train.steps in run_steps; closes the checkpointer and writers.
  tasks: train.eval_tasks' (preflight), scored on the live state at each evaluation.
  teacher: start_teacher's, which turns each batch of rows into the distillation batch.
  Returns the summary: the parameter count, the final step, its loss and eval loss, the rows
  this process read per step, and the signal that stopped the run early, if any."""
  model_cfg, t, seq_len = run_settings.model, run_settings.train, run_settings.data.seq_len
  is_main = jax.process_index() == 0
  meter = Meter(t.batch_size * seq_len, flops_per_token(model_cfg, seq_len),
                mfu_lib.peak_flops() * jax.device_count())
  writer = metrics_lib.MetricsWriter(workdir, t.loggers, dataclasses.asdict(run_settings))
  bar = tqdm(total=t.steps, initial=start, disable=not is_main, dynamic_ncols=True, desc="train")
  evaluate, evaluate_test = make_evaluators(training, data, t, model_cfg)
  live_tasks = eval_tasks_lib.LiveTasks(
      tasks, model_cfg, training.graphdef, data.tokenizer, training.mesh, workdir=workdir,
  ) if tasks else None
  reporter = Reporter(t, meter, evaluate, writer, bar, ckpt, evaluate_test, live_tasks)

  def train_step_at(step: int, state):
    meter.count(step)
    batch = rows_batch(data.corpus.train_rows, next(row_ids), training.batch_sharding)
    return training.train_step(state, batch if teacher is None else teacher(batch))

  lo, hi = local_rows(training.batch_sharding, (t.batch_size, seq_len + 1))  # what it reads
  summary: dict[str, Any] = {"start_step": start, "params": count_params(model_cfg),
                             "unigram_entropy": data.corpus.unigram_entropy,
                             "rows_read_per_step": hi - lo}
  try:
    state, step, signalled, _ = run_steps(
        state, start, t.steps, train_step_at, make_hooks(run_settings, reporter, ckpt, row_ids),
        profile)
    if signalled is not None:
      summary["stopped_by_signal"] = signalled
      if is_main:
        bar.write(f"received {signalled}: saved step {step}, exiting")
  finally:
    bar.close()
    writer.close()
    ckpt.close()
  summary.update(reporter.latest)
  summary["final_step"] = step
  if is_main and "jsonl" in t.loggers:
    write_curves(workdir)
  return summary


# The panels of a pretraining run's curves.png: the losses on one axes, then the schedule and the
# throughput.
CURVES = (("loss", "eval_loss", "test_loss"), "lr", "tokens_per_sec", "mfu")


def write_curves(workdir: str) -> str:
  """workdir/curves.png from its metrics.jsonl (every invocation's steps, as the alignment stages
  plot theirs); returns its path."""
  path = os.path.join(workdir, "curves.png")
  plots.plot_curves(metrics_lib.by_step(workdir), CURVES, path,
                    os.path.basename(os.path.normpath(workdir)))
  return path
