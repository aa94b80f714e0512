"""The whole train step's memory with one attention implementation, compiled or run.

Attention is one part of what a real model's step needs: experiments.attention_bench compiles
an experiment's train step with reference and with flash to compare their temporary memory, and
runs two real steps with flash at a long sequence.
"""

from __future__ import annotations

import json
import os
import resource
import time

import jax
import jax.numpy as jnp
import ml_collections

from model import transformer
from train import config as config_lib
from train import optimizer as optimizer_lib
from train import step as step_lib


def _train_step_parts(config: ml_collections.ConfigDict, impl: str, seq_len: int):
  """(model config, optimizer, the uncompiled train step) of `config` at seq_len with impl."""
  config.data.seq_len = seq_len  # model.max_seq_len follows it
  config.model.attention_impl = impl
  run = config_lib.resolve(config)
  cfg, t = run.model, run.train
  tx = optimizer_lib.make(t, t.steps)
  return cfg, tx, lambda graphdef: step_lib.make_train_step(
      step_lib.lm_loss(graphdef, -1), tx, grad_accum=1,
      lr_schedule=optimizer_lib.schedule(t.lr, t.warmup_steps, t.steps))


def train_step_temp_bytes(config: ml_collections.ConfigDict, impl: str, seq_len: int) -> int:
  """Compiled temporary memory of config's train step on one sequence of seq_len (config: a
  fresh experiment config, changed here)."""
  cfg, tx, make_step = _train_step_parts(config, impl, seq_len)
  graphdef, abstract_params = transformer.abstract(cfg)
  state = jax.eval_shape(lambda p: step_lib.init_state(p, tx, 0), abstract_params)
  batch = jax.ShapeDtypeStruct((1, seq_len + 1), jnp.int32)
  return int(jax.jit(make_step(graphdef)).lower(state, batch).compile()
             .memory_analysis().temp_size_in_bytes)


def run_train_step(config: ml_collections.ConfigDict, seq_len: int, out: str) -> dict:
  """Two real train steps of config's model with flash at seq_len: time per step, loss, peak
  resident memory; also written to out/train_step_run.json."""
  cfg, tx, make_step = _train_step_parts(config, "flash", seq_len)
  graphdef, params = transformer.create(cfg, jax.random.key(0))
  state = step_lib.init_state(params, tx, 0)
  step = jax.jit(make_step(graphdef), donate_argnums=0)
  batch = jax.random.randint(jax.random.key(1), (1, seq_len + 1), 0, cfg.vocab_size)
  compiled = step.lower(state, batch).compile()
  record = {"seq_len": seq_len, "batch": 1, "model": cfg.to_dict(),
            "temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes), "steps": []}
  for _ in range(2):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    loss = float(metrics["loss"])
    record["steps"].append({"loss": loss, "time_s": time.perf_counter() - t0})
  # ru_maxrss is in KiB on Linux.
  record["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "train_step_run.json"), "w", encoding="utf-8") as f:
    json.dump(record, f, indent=2)
  return record
