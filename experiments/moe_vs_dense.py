"""Experiment: Mixture-of-Experts models against a dense model of the same active compute.

  python -m experiments.moe_vs_dense [--config=experiments/configs/moe_vs_dense.py] [--workdir=runs/moe_vs_dense]
      [--out=results/moe_vs_dense] [--launcher=local|print|slurm] [--point=NAME] [--partial]

Two stages of a restartable sweep (train/studies/sweep.py; the config's docstring has the design):
a sweep over MoE settings (E experts, top-k, each expert d_ff / k wide) beside dense at one seed,
then dense and one MoE setting (the sweep's best unless the config names one) at several seeds.
Each run is a point in WORKDIR/points/NAME, done when its result.json exists, so a rerun skips
finished runs and resumes an interrupted one; the print and slurm launchers hand out the pending
points of the current stage (rerun after the sweep stage to hand out the seeds stage). When every
point is done the report writes OUT/results.json (per run: the validation curve, parameters,
analytic and compiled FLOPs per token, step time, expert load; per arm of the seeds stage: mean,
sample standard deviation and range over seeds, and the paired per-seed differences) and
OUT/moe_vs_dense.png.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

from absl import flags
from ml_collections import config_flags

from train import cli
from train.studies import sweep as sweep_lib
from train import plots

FLAGS = flags.FLAGS
DENSE = "dense"


def define_flags() -> None:
  """The flags of this script. Defined on demand, not at import, so tests and other scripts can
  import its functions beside other experiment scripts (absl refuses a flag defined twice)."""
  config_flags.DEFINE_config_file("config", "experiments/configs/moe_vs_dense.py", "Study config.")
  flags.DEFINE_string("workdir", "runs/moe_vs_dense", "Root of the study: one sub-workdir per run.")
  flags.DEFINE_string("out", "results/moe_vs_dense", "Where results.json and the plot go.")
  flags.DEFINE_enum("launcher", "local", sweep_lib.LAUNCHERS, "How pending runs are trained.")
  flags.DEFINE_string("point", "", "Train only this run (what the launchers hand out).")
  flags.DEFINE_bool("partial", False, "Train nothing; report the runs done so far (the compared "
                    "setting: the config's, else the best of the sweep runs done).")


# ----------------------------------------------------------------------------- the points


def setting_overrides(base, setting: str) -> dict:
  """Overrides of an MoE setting 'E<experts>-k<top_k>' (each expert d_ff / top_k wide, so the
  top_k experts of a token hold d_ff hidden units, the dense FFN's), or {} for 'dense'."""
  if setting == DENSE:
    return {}
  try:
    e, k = setting.split("-")
    n_experts, top_k = int(e.removeprefix("E")), int(k.removeprefix("k"))
  except ValueError:
    raise ValueError(f"setting {setting!r} is not like 'E8-k2'") from None
  if base.model.d_ff % top_k:
    raise ValueError(f"model.d_ff={base.model.d_ff} is not divisible by top_k={top_k}")
  return {"model.moe.n_experts": n_experts, "model.moe.top_k": top_k,
          "model.moe.d_expert": base.model.d_ff // top_k}


def make_point(cfg, setting: str, seed: int) -> sweep_lib.Point:
  over = {**setting_overrides(cfg.base, setting), "train.seed": seed}
  meta = {"setting": setting, "seed": seed}
  return sweep_lib.make_point(f"{setting}-s{seed}", cfg.base, over, meta)


def sweep_settings(cfg) -> list[str]:
  return [DENSE] + list(cfg.sweep.settings)


def sweep_points(cfg) -> list[sweep_lib.Point]:
  """Stage 1: dense and every MoE setting at the sweep's seed."""
  return [make_point(cfg, s, cfg.sweep.seed) for s in sweep_settings(cfg)]


def seed_points(cfg, setting: str) -> list[sweep_lib.Point]:
  """Stage 2: dense and `setting` at every seed (the sweep's seed included, the same runs)."""
  return [make_point(cfg, s, seed) for seed in cfg.seeds for s in (DENSE, setting)]


def best_setting(records: list[dict]) -> str:
  """The MoE setting with the lowest final validation loss among the done records."""
  moe = [r for r in records if r["meta"]["setting"] != DENSE]
  if not moe:
    raise ValueError("the sweep has no MoE setting to compare (sweep.settings is empty)")
  return min(moe, key=lambda r: r["eval_loss"])["meta"]["setting"]


def all_points(cfg, root: str, partial: bool = False) -> tuple[list[sweep_lib.Point], str]:
  """(every point known now, the compared setting or ''): the seeds stage is known once the
  config names its setting or the sweep stage is done (with `partial`, once any MoE run of the
  sweep is done: the best of those)."""
  points = sweep_points(cfg)
  setting = cfg.compare
  if not setting and (partial or not sweep_lib.pending(root, points)):
    setting = best_setting(sweep_lib.collect(root, points))
  if setting:
    setting_overrides(cfg.base, setting)  # a malformed name fails here
    names = {p.name for p in points}
    points += [p for p in seed_points(cfg, setting) if p.name not in names]
  return points, setting


# ----------------------------------------------------------------------------- measurements


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


def setting_costs(cfg, setting: str, root: str) -> dict:
  """Parameters and FLOPs per token of a setting (the same at every seed): analytic, and of the
  compiled train step (capacity dispatch, the one trained; docs/moe.md has dropless's on a CPU).
  Cached in ROOT/costs/, so a second report compiles nothing."""
  config = sweep_lib.apply_overrides(cfg.base, setting_overrides(cfg.base, setting))
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
  prefix = "moe/expert_share/"
  shares = [[r[k] for k in sorted((k for k in r if k.startswith(prefix)),
                                  key=lambda k: int(k[len(prefix):]))] for r in records]
  if any(shares):
    out["expert_share_last_100_steps"] = _share_range(
        [s for r, s in zip(records, shares) if s and r["step"] > records[-1]["step"] - 100])
    out["final_load_balance_loss"] = records[-1].get("moe/load_balance_loss")
    out["mean_drop_fraction"] = float(np.mean([r.get("moe/drop_fraction", 0.0) for r in records]))
  return out


def _share_range(shares: list[list[float]]) -> list[float]:
  import numpy as np

  mean = np.mean(np.asarray(shares), axis=0)  # per expert, over the logged steps
  return [float(mean.min()), float(mean.max())]


def aggregate(loss_by_arm: dict[str, dict[int, float]]) -> dict:
  """Per arm, over its seeds: the values in seed order, their mean, sample standard deviation
  (ddof 1), min and max; and the paired differences (second arm minus first) at the seeds both
  arms have.

  loss_by_arm: {arm: {seed: loss}}, the first arm the reference (dense).
  """
  import numpy as np

  arms = list(loss_by_arm)
  out = {"arms": {}}
  for arm, by_seed in loss_by_arm.items():
    v = np.asarray([by_seed[s] for s in sorted(by_seed)], dtype=np.float64)
    out["arms"][arm] = {
        "seeds": sorted(by_seed), "values": v.tolist(), "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "min": float(v.min()), "max": float(v.max())}
  if len(arms) == 2:
    ref, other = (loss_by_arm[a] for a in arms)
    seeds = sorted(set(ref) & set(other))
    d = np.asarray([other[s] - ref[s] for s in seeds], dtype=np.float64)
    a, b = (out["arms"][x] for x in arms)
    out["difference"] = {
        "of": f"{arms[1]} - {arms[0]}",
        "mean": b["mean"] - a["mean"],
        "paired": dict(zip(map(str, seeds), d.tolist())),
        "paired_std": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
        "largest_arm_std": max(a["std"], b["std"]),
        # The goal: the second arm lower by more than the seeds' spread, in both senses.
        "lower_by_more_than_std": bool(a["mean"] - b["mean"] > max(a["std"], b["std"])),
        "ranges_separate": bool(b["max"] < a["min"]),
    }
  return out


# ----------------------------------------------------------------------------- report


def report(cfg, root: str, points, setting: str, out_dir: str) -> dict:
  """Writes OUT/results.json and the plot from the done runs among `points` (all of them, unless
  the study is collected early with --partial: then results.json lists the missing runs)."""
  records = {r["name"]: r for r in sweep_lib.collect(root, points)}
  base = cfg.base
  tokens_per_step = base.train.batch_size * base.data.seq_len
  runs = {}
  done = [p for p in points if p.name in records]
  for p in done:
    r = records[p.name]
    runs[p.name] = {"name": p.name, "setting": p.meta["setting"], "seed": p.meta["seed"],
                    "final_eval_loss": r["eval_loss"], "tokens": r["tokens"], "wall_s": r["wall_s"],
                    **run_summary(sweep_lib.point_dir(root, p.name), tokens_per_step)}
  costs = {s: setting_costs(cfg, s, root) for s in dict.fromkeys(p.meta["setting"] for p in done)}
  dense = costs[DENSE]
  sweep_rows = []
  for p in sweep_points(cfg):
    if p.name not in runs:
      continue
    s, run = p.meta["setting"], runs[p.name]
    c = costs[s]
    row = {"setting": s, "seed": p.meta["seed"], "final_eval_loss": run["final_eval_loss"],
           "train_loss_last_200_steps": run["train_loss_last_200_steps"],
           "params_total": c["params"]["total"], "params_active": c["params"]["active"],
           "analytic_flops_ratio_vs_dense":
               c["analytic_train_flops_per_token"] / dense["analytic_train_flops_per_token"],
           "median_step_time_s": run["median_step_time_s"],
           "compiled_flops_ratio_vs_dense":
               c["compiled_train_flops_per_token"] / dense["compiled_train_flops_per_token"]}
    for k in ("mean_drop_fraction", "final_load_balance_loss", "expert_share_last_100_steps"):
      if k in run:
        row[k] = run[k]
    sweep_rows.append(row)
  by_arm = {DENSE: {}, setting: {}}
  train_by_arm = {DENSE: {}, setting: {}}
  for p in seed_points(cfg, setting):
    if p.name in runs:
      by_arm[p.meta["setting"]][p.meta["seed"]] = runs[p.name]["final_eval_loss"]
      train_by_arm[p.meta["setting"]][p.meta["seed"]] = runs[p.name]["train_loss_last_200_steps"]
  results = {
      "study": "moe_vs_dense", "machine": sweep_lib.machine_info(),
      "complete": len(done) == len(points),
      "missing": [p.name for p in points if p.name not in records],
      "train": {"steps": base.train.steps, "batch_size": base.train.batch_size,
                "seq_len": base.data.seq_len, "tokens": base.train.steps * tokens_per_step,
                "lr": base.train.lr},
      "moe": {k: base.model.moe[k] for k in ("dispatch", "capacity_factor", "aux_loss_weight",
                                             "z_loss_weight", "every")},
      "sweep": sweep_rows,
      "compare": setting, "compare_chosen_by": "config" if cfg.compare else "sweep",
      "seeds": aggregate(by_arm),
      "seeds_train_loss_last_200_steps": aggregate(train_by_arm),
      "costs": costs,
      "wall_s_total": sum(r["wall_s"] for r in records.values()),
      "runs": runs,
  }
  os.makedirs(out_dir, exist_ok=True)
  sweep_lib.write_json(os.path.join(out_dir, "results.json"), results)
  results["plot"] = plot(results, out_dir)
  return results


def plot(results: dict, out_dir: str) -> str:
  plt = plots.pyplot()
  import numpy as np

  setting = results["compare"]
  fig, axes = plt.subplots(1, 2, figsize=(13, 5.6))
  ax = axes[0]
  for i, arm in enumerate((DENSE, setting)):
    color = plt.cm.tab10(i)
    curves = [r for r in results["runs"].values() if r["setting"] == arm]
    for r in curves:
      ax.plot([e["tokens"] for e in r["eval"]], [e["eval_loss"] for e in r["eval"]], "-",
              color=color, lw=0.7, alpha=0.6)
    n = min(len(r["eval"]) for r in curves)
    tokens = [e["tokens"] for e in curves[0]["eval"][:n]]
    mean = np.mean([[e["eval_loss"] for e in r["eval"][:n]] for r in curves], axis=0)
    s = results["seeds"]["arms"][arm]
    ax.plot(tokens, mean, "-", color=color, lw=2.2,
            label=f"{arm}: {s['mean']:.3f} ± {s['std']:.3f} (mean ± std of {len(curves)} seeds)")
  ax.set(xlabel="training tokens", ylabel="validation loss (nats/token)",
         title=f"dense vs MoE {setting} at equal active parameters (thin: seeds, bold: mean)")
  lo = min(min(r["final_eval_loss"] for r in results["runs"].values()) - 0.05, 100)
  ax.set_ylim(lo, lo + 1.5)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)

  ax = axes[1]
  rows = results["sweep"]
  x = np.arange(len(rows))
  ax.plot(x, [r["final_eval_loss"] for r in rows], "o", color="k",
          label=f"validation loss, seed {rows[0]['seed']}")
  ax.plot(x, [r["train_loss_last_200_steps"] for r in rows], "^", color="gray", mfc="none",
          label="training loss, logged batches of the last 200 steps (each seen once)")
  for i, arm in enumerate((DENSE, setting)):
    s = results["seeds"]["arms"][arm]
    j = [r["setting"] for r in rows].index(arm)
    ax.errorbar([j + 0.15], [s["mean"]], yerr=[[s["mean"] - s["min"]], [s["max"] - s["mean"]]],
                fmt="s", color=plt.cm.tab10(i), capsize=4,
                label=f"{arm}: mean and range of {len(s['seeds'])} seeds")
  ax.axhline(rows[0]["final_eval_loss"], color="gray", ls=":", lw=1)
  ax.set_xticks(x, [r["setting"] for r in rows])
  ax.set(xlabel="setting (E experts, top-k, each expert d_ff / k wide)",
         ylabel="final loss (nats/token)", title="sweep: final loss per setting")
  ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
  ax.grid(alpha=0.3)
  path = os.path.join(out_dir, "moe_vs_dense.png")
  plots.save(fig, path, dpi=110)
  return path


# ----------------------------------------------------------------------------- main


def main(argv):
  del argv
  cli.setup()
  cfg = FLAGS.config
  try:
    if FLAGS.partial:  # collect what is done, train nothing
      points, setting = all_points(cfg, FLAGS.workdir, partial=True)
    else:
      for _ in range(2):  # the sweep stage, then (once it is done) the seeds stage
        points, setting = all_points(cfg, FLAGS.workdir)
        done = sweep_lib.launch(
            FLAGS.workdir, cfg.base, points, launcher=FLAGS.launcher, point=FLAGS.point,
            argv=sys.argv, job_name=cfg.launch.job_name,
            slurm_options=tuple(cfg.launch.slurm_options))
        if FLAGS.point or not done or setting:
          break
      if FLAGS.point:
        return
      if not done or not setting:
        print("runs pending; rerun this command when they are done, to continue or collect",
              file=sys.stderr)
        return
    results = report(cfg, FLAGS.workdir, points, setting, FLAGS.out)
  except (ValueError, FileNotFoundError) as e:
    cli.fail(e)
  out = sys.stderr if FLAGS.launcher == "print" else sys.stdout
  print(json.dumps({"compare": results["compare"], "missing": results["missing"],
                    "sweep": {r["setting"]: round(r["final_eval_loss"], 4)
                              for r in results["sweep"]},
                    "seeds": results["seeds"]}, indent=2), file=out)


if __name__ == "__main__":
  cli.run(main, define_flags)
