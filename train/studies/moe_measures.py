"""Measurements of the MoE against dense study's runs: the parameters and FLOPs per token of a
setting (analytic, and of the compiled train step), and what a run's metrics.jsonl says (its
validation curve, step time, expert load). train/studies/moe_comparison.py reports them.
"""

from __future__ import annotations

import hashlib
import json
import os

from train.studies import sweep as sweep_lib


def step_flops_per_token(config, dispatch=None) -> float:
  """FLOPs per token of one compiled train step (XLA's cost analysis), on one device."""
  import jax
  import jax.numpy as jnp

  from model.config import ModelConfig
  from sharding import mesh as mesh_lib
  from train import state as state_lib
  from train.config import TrainSettings

  config = config.copy_and_resolve_references()
  if dispatch:
    config.model.moe.dispatch = dispatch
  # XLA's cost analysis counts the body of a loop once, so a scanned model would report one
  # layer's FLOPs; the unrolled step has the same arithmetic and counts every layer.
  config.model.scan_layers = False
  model_cfg = ModelConfig.from_dict(config.model.to_dict())
  mesh = mesh_lib.make_mesh({"data": 1}, jax.devices()[:1])
  st = state_lib.make_sharded_training(
      model_cfg, TrainSettings.from_config(config.train), mesh, 0, pad_id=-1)
  batch = jax.ShapeDtypeStruct((config.train.batch_size, config.data.seq_len + 1), jnp.int32,
                               sharding=st.batch_sharding)
  cost = st.train_step.lower(st.abstract_state, batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost["flops"]) / (config.train.batch_size * config.data.seq_len)


def setting_costs(config, setting: str, root: str) -> dict:
  """Parameters and FLOPs per token of a setting whose run config is `config` (the same at every
  seed): analytic, and of the compiled train step (capacity dispatch, the one trained;
  docs/moe.md has dropless's on a CPU). Cached in ROOT/costs/, so a second report compiles
  nothing."""
  key = json.dumps([config.model.to_dict(), config.data.seq_len, config.train.batch_size],
                   sort_keys=True, default=str)
  path = os.path.join(root, "costs", f"{setting}-{hashlib.sha1(key.encode()).hexdigest()[:8]}.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  out = _costs(config)
  sweep_lib.write_json(path, out)
  return out


def _costs(config) -> dict:
  from model.config import ModelConfig, count_params, flops_per_token

  model_cfg = ModelConfig.from_dict(config.model.to_dict())
  out = {"params": count_params(model_cfg),
         "analytic_train_flops_per_token": flops_per_token(model_cfg, config.data.seq_len)}
  out["compiled_train_flops_per_token"] = step_flops_per_token(config)
  return out


def run_summary(workdir: str, tokens_per_step: int) -> dict:
  """From a run's metrics.jsonl: its validation curve, median step time and expert load."""
  import numpy as np

  from train import metrics as metrics_lib

  records = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  by_step = {r["step"]: r for r in records}  # a step logged twice keeps its newest record
  records = [by_step[s] for s in sorted(by_step)]
  tps = [r["tokens_per_sec"] for r in records if "tokens_per_sec" in r]
  last = records[-1]["step"]
  # Each training batch is seen once (1.2M of the corpus's ~10M tokens) and its loss is taken
  # before the update: a second held-out estimate, over random rows of the whole corpus where the
  # validation batches are a few contiguous files (the same batches in both arms at one seed).
  train_tail = [r["loss"] for r in records if "loss" in r and r["step"] > last - 200]
  out = {
      "eval": [{"step": r["step"], "tokens": r["tokens_seen"], "eval_loss": r["eval_loss"]}
               for r in records if "eval_loss" in r],
      "train_loss_last_200_steps": float(np.mean(train_tail)),
      "median_step_time_s": tokens_per_step / float(np.median(tps)) if tps else None,
  }
  shares = [_vector(r, "moe/expert_share/") for r in records]
  if any(shares):
    tail = [s for r, s in zip(records, shares) if s and r["step"] > records[-1]["step"] - 100]
    out["expert_share_last_100_steps"] = _share_range(tail)
    out["expert_share_train_last_100_steps"] = np.mean(np.asarray(tail), axis=0).tolist()
    out["final_load_balance_loss"] = records[-1].get("moe/load_balance_loss")
    out["mean_drop_fraction"] = float(np.mean([r.get("moe/drop_fraction", 0.0) for r in records
                                               if "loss" in r]))
    evals = [r for r in records if "eval_loss" in r]
    out["final_eval_drop_fraction"] = evals[-1].get("eval/moe/drop_fraction") if evals else None
    out["expert_share_eval_final"] = _vector(evals[-1], "eval/moe/expert_share/") if evals else []
  # The evaluation-dispatch ablation: the test rows scored with training's dispatch (logged at
  # the last step where model.moe.eval_dispatch differs from it; train/pretrain.py).
  out["test_train_dispatch_loss"] = records[-1].get("test_train_dispatch_loss")
  return out


def _vector(record: dict, prefix: str) -> list[float]:
  """record's PREFIX0, PREFIX1, ... as a list (an expert-share vector as logged)."""
  keys = sorted((k for k in record if k.startswith(prefix)), key=lambda k: int(k[len(prefix):]))
  return [record[k] for k in keys]


def _share_range(shares: list[list[float]]) -> list[float]:
  import numpy as np

  mean = np.mean(np.asarray(shares), axis=0)  # per expert, over the logged steps
  return [float(mean.min()), float(mean.max())]
