"""The training loop: the thin stateful shell around the jitted train step.

config -> mesh -> data -> model -> train step -> checkpoint. Rerunning with the same workdir
resumes from the newest readable checkpoint; losses are then bit-identical (on CPU) to a run
that never stopped, because the state, the PRNG key and the data iterator's position are all
restored. SIGTERM / SIGINT finish the current step, save and return normally.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from tqdm import tqdm

from model import transformer
from model.config import ModelConfig, count_params, flops_per_token
from sharding import mesh as mesh_lib
from sharding import rules as rules_lib
from train import checkpoint as ckpt_lib
from train import config as config_lib
from train import data as data_lib
from train import metrics as metrics_lib
from train import mfu as mfu_lib
from train import optimizer as optimizer_lib
from train import step as step_lib
from train import tokenizer as tokenizer_lib


class NonFiniteLoss(RuntimeError):
  """The loss became NaN or Inf; the last good checkpoint is left as it was."""


class _StopFlag:
  """Set by SIGTERM / SIGINT; the loop saves and returns at the next step boundary."""

  def __init__(self):
    self.signum: Optional[int] = None
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    self.signum = signum

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def _global_batch(local_BxL1: np.ndarray, sharding) -> jax.Array:
  return jax.make_array_from_process_local_data(sharding, local_BxL1)


def _process_slice(global_BxL1: np.ndarray) -> np.ndarray:
  per = len(global_BxL1) // jax.process_count()
  i = jax.process_index()
  return global_BxL1[i * per:(i + 1) * per]


def train(config: ml_collections.ConfigDict, workdir: str, *, rules: rules_lib.Rules = rules_lib.REPLICATED) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`. Returns a summary of the final step."""
  model_cfg: ModelConfig = config_lib.validate(config)
  config_lib.check_workdir(workdir, config)
  t = config.train
  mesh = mesh_lib.make_mesh(config.sharding.mesh)
  dp = mesh_lib.data_parallel_size(mesh)
  if t.batch_size % (dp * t.grad_accum):
    raise config_lib.ConfigError(
        f"train.batch_size={t.batch_size} must be divisible by the data-parallel size ({dp}) "
        f"times train.grad_accum ({t.grad_accum})")
  local_batch = t.batch_size // jax.process_count()

  os.makedirs(workdir, exist_ok=True)
  tok, corpus = data_lib.prepare(
      workdir, config.data.paths, config.data.seq_len, config.data.vocab_size, local_batch)
  if tok.get_vocab_size() > model_cfg.vocab_size:
    raise config_lib.ConfigError(
        f"the tokenizer in {workdir} has {tok.get_vocab_size()} tokens but model.vocab_size="
        f"{model_cfg.vocab_size}; raise model.vocab_size or use a new --workdir")
  pad_id = tokenizer_lib.special_id(tok, tokenizer_lib.PAD)
  if jax.process_index() == 0:
    config_lib.save(workdir, config)

  # Model and optimizer state, initialised directly in its sharded layout.
  graphdef, abstract_params = transformer.abstract(model_cfg)
  param_sharding = rules_lib.param_shardings(abstract_params, mesh, rules)
  tx = optimizer_lib.make(t, t.steps)
  lr_schedule = optimizer_lib.schedule(t.lr, t.warmup_steps, t.steps)

  def init_fn(key):
    _, params = transformer.create(model_cfg, key)
    return step_lib.init_state(graphdef, params, tx, t.seed)

  abstract_state = jax.eval_shape(init_fn, jax.random.key(t.seed))
  state_sharding = _state_sharding(abstract_state, param_sharding, mesh)
  abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, state_sharding)

  ckpt = ckpt_lib.Checkpointer(
      os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep,
      every_steps=config.checkpoint.every_steps)
  train_iter = data_lib.train_iterator(
      corpus.train_NxL1, local_batch, t.seed, jax.process_index(), jax.process_count())
  restored = ckpt.restore_latest(abstract_state)
  if restored is None:
    state = jax.jit(init_fn, out_shardings=state_sharding)(jax.random.key(t.seed))
    start = 0
  else:
    start, state, data_state = restored
    train_iter.set_state(data_state)

  batch_sharding = rules_lib.batch_sharding(mesh)
  train_step = jax.jit(
      step_lib.make_train_step(graphdef, tx, pad_id=pad_id, grad_accum=t.grad_accum,
                               lr_schedule=lr_schedule),
      in_shardings=(state_sharding, batch_sharding),
      out_shardings=(state_sharding, rules_lib.replicated(mesh)),
      donate_argnums=0)
  eval_step = jax.jit(
      step_lib.make_eval_step(graphdef, pad_id=pad_id),
      in_shardings=(param_sharding, batch_sharding))
  val_batches = data_lib.eval_batches(corpus.val_NxL1, t.batch_size, t.eval_batches)

  def evaluate(params) -> float:
    total, count = 0.0, 0
    for b in val_batches:
      s, n = eval_step(params, _global_batch(_process_slice(b), batch_sharding))
      total, count = total + float(s), count + int(n)
    return total / max(count, 1)

  flops_tok = flops_per_token(model_cfg, config.data.seq_len)
  peak = mfu_lib.peak_flops() * jax.device_count()
  writer = metrics_lib.MetricsWriter(workdir)
  is_main = jax.process_index() == 0
  bar = tqdm(total=t.steps, initial=start, disable=not is_main, dynamic_ncols=True, desc="train")
  summary: dict[str, Any] = {"start_step": start, "params": count_params(model_cfg),
                             "unigram_entropy": corpus.unigram_entropy}
  tokens_per_step = t.batch_size * config.data.seq_len
  timer = {"t": None, "steps": 0}

  def inspect(step: int, metrics) -> dict:
    """Reads a step's metrics back (one step late, so the device is never idle) and logs them."""
    loss = float(metrics["loss"])
    if not np.isfinite(loss):
      raise NonFiniteLoss(
          f"loss is {loss} at step {step}; stopped without saving, the last good checkpoint "
          f"({max(ckpt.steps(), default='none')}) is untouched. Lower train.lr or raise "
          "train.warmup_steps")
    now = time.perf_counter()
    record = {"loss": loss, "lr": float(metrics["lr"]), "grad_norm": float(metrics["grad_norm"]),
              "tokens_seen": step * tokens_per_step}
    if timer["t"] is not None and timer["steps"]:
      tps = timer["steps"] * tokens_per_step / (now - timer["t"])
      record["tokens_per_sec"] = tps
      record["mfu"] = flops_tok * tps / peak
    timer["t"], timer["steps"] = now, 0
    summary.update(step=step, loss=loss)
    return record

  def report(pending, state) -> None:
    step, metrics = pending
    record = inspect(step, metrics)
    if step % t.eval_every == 0 or step == t.steps:
      record["eval_loss"] = summary["eval_loss"] = evaluate(state["params"])
      timer["t"] = time.perf_counter()  # evaluation time is not training throughput
    if step % t.log_every == 0 or "eval_loss" in record or step == t.steps:
      writer.write(step, record)
    postfix = {"loss": f"{record['loss']:.3f}"}
    if "tokens_per_sec" in record:
      postfix["tok/s"] = f"{record['tokens_per_sec']:.0f}"
    bar.set_postfix(postfix, refresh=False)
    bar.update(step - bar.n)

  pending = None  # (step, metrics) dispatched but not yet read back
  step = start
  try:
    with _StopFlag() as stop:
      while step < t.steps and stop.signum is None:
        batch = _global_batch(next(train_iter), batch_sharding)
        state, metrics = train_step(state, batch)
        step += 1
        timer["steps"] += 1
        if pending is not None:
          report(pending, state)
        pending = (step, metrics)
        must_save = step % config.checkpoint.every_steps == 0 or step == t.steps or stop.signum
        if must_save or step % t.eval_every == 0:  # read back now: eval and saves see this step
          report(pending, state)
          pending = None
        if must_save:
          ckpt.save(step, state, train_iter.get_state())
          timer["t"] = time.perf_counter()
      if pending is not None:
        report(pending, state)
      if stop.signum is not None:
        summary["stopped_by_signal"] = signal.Signals(stop.signum).name
        if is_main:
          bar.write(f"received {summary['stopped_by_signal']}: saved step {step}, exiting")
  finally:
    bar.close()
    writer.close()
    ckpt.close()
  summary["final_step"] = step
  return summary


def _state_sharding(abstract_state, param_sharding, mesh):
  """Shardings of the whole train state: optimizer moments that mirror the parameters take the
  parameters' sharding, everything else (step, counts, PRNG key) is replicated."""
  repl = rules_lib.replicated(mesh)
  params_def = jax.tree.structure(abstract_state["params"])

  def for_node(node):
    if isinstance(node, nnx.State) and jax.tree.structure(node) == params_def:
      return param_sharding
    return jax.tree.map(lambda _: repl, node)

  opt = jax.tree.map(for_node, abstract_state["opt_state"], is_leaf=lambda n: isinstance(n, nnx.State))
  return {"step": repl, "params": param_sharding, "opt_state": opt, "rng": repl}
