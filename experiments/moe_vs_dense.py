"""Experiment: a Mixture-of-Experts model against a dense model of the same active compute.

  python -m experiments.moe_vs_dense [--workdir=runs/moe_vs_dense] [--out=results/moe_vs_dense]
      [--config=experiments/configs/moe_vs_dense.py] [--config.train.steps=...]

Trains both arms (resumable: each is an ordinary run in workdir/dense and workdir/moe), then writes
results.json and plots: validation loss against tokens and against wall-clock time, total and
active parameters, FLOPs per token from the compiled train step's cost analysis (for the MoE arm
with both dispatch styles), step times, and the expert-load heat map over training.
"""

import json
import os

from absl import flags
from ml_collections import config_flags

from experiments import common
from train import plots

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script. Defined on demand, not at import, so tests and other scripts can
  import its functions beside other experiment scripts (absl refuses a flag defined twice)."""
  config_flags.DEFINE_config_file("config", "experiments/configs/moe_vs_dense.py", "MoE arm config.")
  flags.DEFINE_string("workdir", "runs/moe_vs_dense", "Parent directory of the two runs.")
  flags.DEFINE_string("out", "results/moe_vs_dense", "Where results.json and the plots go.")


def arms(config):
  """{'dense': config, 'moe': config}: the same run but for the FFN."""
  dense = config.copy_and_resolve_references()
  dense.model.moe.n_experts = 0
  return {"dense": dense, "moe": config.copy_and_resolve_references()}


def step_flops_per_token(config, dispatch=None) -> float:
  """FLOPs per token of one compiled train step (XLA's cost analysis), on one device."""
  import jax
  import jax.numpy as jnp

  from model.config import ModelConfig
  from sharding import mesh as mesh_lib
  from train import loop
  from train.settings import TrainSettings

  config = config.copy_and_resolve_references()
  if dispatch:
    config.model.moe.dispatch = dispatch
  # XLA's cost analysis counts the body of a loop once, so a scanned model would report one
  # layer's FLOPs; the unrolled step has the same arithmetic and counts every layer.
  config.model.scan_layers = False
  model_cfg = ModelConfig.from_dict(config.model.to_dict())
  mesh = mesh_lib.make_mesh({"data": 1}, jax.devices()[:1])
  st = loop.make_sharded_training(
      model_cfg, TrainSettings.from_config(config.train), mesh, 0, pad_id=-1)
  batch = jax.ShapeDtypeStruct((config.train.batch_size, config.data.seq_len + 1), jnp.int32,
                               sharding=st.batch_sharding)
  cost = st.train_step.lower(st.abstract_state, batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost["flops"]) / (config.train.batch_size * config.data.seq_len)


def summarise(name, config, workdir):
  import numpy as np

  from model.config import ModelConfig, count_params, flops_per_token
  from train import metrics as metrics_lib

  records = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  by_step = {r["step"]: r for r in records}  # a step logged twice keeps its newest record
  records = [by_step[s] for s in sorted(by_step)]
  evals = [r for r in records if "eval_loss" in r]
  t0 = records[0]["time"]
  model_cfg = ModelConfig.from_dict(config.model.to_dict())
  tps = [r["tokens_per_sec"] for r in records if "tokens_per_sec" in r]
  tokens_per_step = config.train.batch_size * config.data.seq_len
  out = {
      "params": count_params(model_cfg),
      "analytic_train_flops_per_token": flops_per_token(model_cfg, config.data.seq_len),
      "compiled_train_flops_per_token": step_flops_per_token(config),
      "eval": [{"step": r["step"], "tokens": r["tokens_seen"], "time_s": r["time"] - t0,
                "eval_loss": r["eval_loss"]} for r in evals],
      "final_eval_loss": evals[-1]["eval_loss"],
      "median_tokens_per_sec": float(np.median(tps)),
      "median_step_time_s": tokens_per_step / float(np.median(tps)),
  }
  if model_cfg.moe.enabled:
    shares = [[r.get(f"moe/expert_share/{i}", np.nan) for i in range(model_cfg.moe.n_experts)]
              for r in records]
    out["expert_share_by_step"] = {"steps": [r["step"] for r in records], "share": shares}
    out["final_load_balance_loss"] = records[-1].get("moe/load_balance_loss")
    out["mean_drop_fraction"] = float(np.mean([r.get("moe/drop_fraction", 0.0) for r in records]))
    other = "dropless" if model_cfg.moe.dispatch == "capacity" else "capacity"
    out[f"compiled_train_flops_per_token_{other}"] = step_flops_per_token(config, other)
  return out


def plot(results, out_dir):
  plt = plots.pyplot()
  import numpy as np

  fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
  for name, r in results["arms"].items():
    tokens = [e["tokens"] for e in r["eval"]]
    axes[0].plot(tokens, [e["eval_loss"] for e in r["eval"]], "o-", label=name)
    axes[1].plot([e["time_s"] for e in r["eval"]], [e["eval_loss"] for e in r["eval"]], "o-", label=name)
  axes[0].set(xlabel="training tokens", ylabel="validation loss (nats/token)", title="loss vs tokens")
  axes[1].set(xlabel="wall-clock seconds", ylabel="validation loss", title="loss vs time")
  for ax in axes[:2]:
    ax.legend()
    ax.grid(alpha=0.3)
  moe = results["arms"]["moe"]["expert_share_by_step"]
  share = np.asarray(moe["share"]).T
  im = axes[2].imshow(share, aspect="auto", origin="lower", cmap="viridis",
                      extent=[moe["steps"][0], moe["steps"][-1], -0.5, share.shape[0] - 0.5])
  axes[2].set(xlabel="step", ylabel="expert", title="share of token assignments per expert")
  fig.colorbar(im, ax=axes[2])
  plots.save(fig, os.path.join(out_dir, "moe_vs_dense.png"), dpi=110)


def main(argv):
  del argv
  common.setup()
  from train import loop

  results = {"arms": {}}
  try:
    for name, config in arms(FLAGS.config).items():
      workdir = os.path.join(FLAGS.workdir, name)
      loop.train(config, workdir)
      results["arms"][name] = summarise(name, config, workdir)
  except (ValueError, loop.NonFiniteLoss) as e:
    common.fail(e)
  dense, moe = results["arms"]["dense"], results["arms"]["moe"]
  results["active_flops_ratio_moe_over_dense"] = (
      moe["compiled_train_flops_per_token"] / dense["compiled_train_flops_per_token"])
  results["step_time_ratio_moe_over_dense"] = moe["median_step_time_s"] / dense["median_step_time_s"]
  results["final_eval_loss_moe_minus_dense"] = moe["final_eval_loss"] - dense["final_eval_loss"]
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  plot(results, FLAGS.out)
  print(json.dumps({k: v for k, v in results.items() if k != "arms"}, indent=2))


if __name__ == "__main__":
  common.run(main, define_flags)
