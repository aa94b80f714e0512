"""The MoE against dense study: its points, the aggregation over seeds, the report and the plot.

Two stages of a restartable sweep (train/studies/sweep.py; experiments/configs/moe_vs_dense.py
has the design): a sweep over MoE settings 'E<experts>-k<top_k>' (each expert d_ff / k wide, so
the active FFN width is dense's) beside dense at one seed, then dense and one MoE setting (the
sweep's best unless the config names one) at several seeds. Per-run measurements come from
train/studies/moe_measures.py.
"""

from __future__ import annotations

import os

from train import plots
from train.studies import moe_measures
from train.studies import sweep as sweep_lib

DENSE = "dense"


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


VARIANTS = {
    "": {},  # the arm as configured (init_scale match_dense, its own best learning rate)
    "init_standard": {"model.moe.init_scale": "standard"},  # ablation: dense's init per expert
}


def make_point(cfg, setting: str, seed: int, lr: float, variant: str = "") -> sweep_lib.Point:
  """One run: `setting` at learning rate lr and seed; variant: a VARIANTS ablation or ""."""
  over = {**setting_overrides(cfg.base, setting), **VARIANTS[variant], "train.seed": seed,
          "train.lr": lr}
  meta = {"setting": setting, "seed": seed, "lr": lr, "variant": variant}
  label = f"{setting}{'-' + variant if variant else ''}-lr{lr:g}-s{seed}"
  return sweep_lib.make_point(label, cfg.base, over, meta)


def sweep_settings(cfg) -> list[str]:
  return [DENSE] + list(cfg.sweep.settings)


def lrs(cfg) -> list[float]:
  """The learning rates every arm tries at the sweep's seed (the base's alone if lrs is empty)."""
  return list(cfg.lrs) or [cfg.base.train.lr]


def sweep_points(cfg) -> list[sweep_lib.Point]:
  """Stage 1: dense and every MoE setting at every learning rate, at the sweep's seed."""
  return [make_point(cfg, s, cfg.sweep.seed, lr) for s in sweep_settings(cfg) for lr in lrs(cfg)]


def best_lrs(records: list[dict]) -> dict[str, float]:
  """{setting: the learning rate of its lowest validation loss} over the done sweep records."""
  best = {}
  for r in records:
    s = r["meta"]["setting"]
    if r["meta"].get("variant", "") == "" and (s not in best or r["eval_loss"] < best[s][0]):
      best[s] = (r["eval_loss"], r["meta"]["lr"])
  return {s: lr for s, (_, lr) in best.items()}


def seed_points(cfg, setting: str, chosen_lr: dict[str, float]) -> list[sweep_lib.Point]:
  """Stage 2: dense and `setting` at their own best learning rates at every seed, and the
  ablations of the MoE arm at every seed (cfg.ablations): init_standard (dense's init in every
  expert, its best lr) and shared_lr (dense's best lr). Runs with the same settings share a
  name, so a sweep run or an ablation that equals the main arm is trained once."""
  out, names = [], set()
  for seed in cfg.seeds:
    todo = [(DENSE, chosen_lr[DENSE], ""), (setting, chosen_lr[setting], "")]
    if "init_standard" in cfg.ablations:
      todo.append((setting, chosen_lr[setting], "init_standard"))
    if "shared_lr" in cfg.ablations:
      todo.append((setting, chosen_lr[DENSE], ""))
    for s, lr, variant in todo:
      p = make_point(cfg, s, seed, lr, variant)
      if p.name not in names:
        names.add(p.name)
        out.append(p)
  return out


def best_setting(records: list[dict]) -> str:
  """The MoE setting with the lowest final validation loss among the done records."""
  moe = [r for r in records if r["meta"]["setting"] != DENSE]
  if not moe:
    raise ValueError("the sweep has no MoE setting to compare (sweep.settings is empty)")
  return min(moe, key=lambda r: r["eval_loss"])["meta"]["setting"]


def all_points(cfg, root: str, partial: bool = False
               ) -> tuple[list[sweep_lib.Point], str, dict[str, float]]:
  """(every point known now, the compared setting or '', {setting: chosen lr}): the seeds stage
  is known once the sweep stage is done (with `partial`, once any MoE run of it is done: the
  best of those). Learning rates and the setting (unless the config names one) are chosen on
  the validation loss; the test loss is only reported."""
  points = sweep_points(cfg)
  done = sweep_lib.collect(root, points)
  if not (partial and done) and sweep_lib.pending(root, points):
    return points, "", {}
  chosen_lr = best_lrs(done)
  setting = cfg.compare or best_setting(done)
  setting_overrides(cfg.base, setting)  # a malformed name fails here
  if DENSE not in chosen_lr or setting not in chosen_lr:
    return points, "", chosen_lr
  names = {p.name for p in points}
  points += [p for p in seed_points(cfg, setting, chosen_lr) if p.name not in names]
  return points, setting, chosen_lr


def ci95_half_width(values) -> float | None:
  """Half-width of the 95% Student-t interval of the mean of `values` (None below 2 values)."""
  import numpy as np
  from scipy import stats

  v = np.asarray(values, dtype=np.float64)
  if len(v) < 2:
    return None
  return float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


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
        "min": float(v.min()), "max": float(v.max()), "ci95": ci95_half_width(v)}
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
        "paired_mean": float(d.mean()) if len(d) else None,
        "paired_ci95": ci95_half_width(d),  # mean +- this holds the true paired mean at 95%
        "largest_arm_std": max(a["std"], b["std"]),
        # The goal: the second arm lower by more than the seeds' spread, in both senses.
        "lower_by_more_than_std": bool(a["mean"] - b["mean"] > max(a["std"], b["std"])),
        "ranges_separate": bool(b["max"] < a["min"]),
    }
  return out


ABLATIONS = {  # row: (the MoE runs it reads, the loss it reads from them)
    "eval_dispatch_as_training": ("", "test_train_dispatch_loss"),
    "init_standard": ("init_standard", "test_loss"),
    "shared_lr": ("", "test_loss"),  # the MoE arm at dense's chosen lr (comparisons)
}


def arm_losses(cfg, runs: dict, setting: str, lr: float, variant: str, key: str) -> dict:
  """{seed: the run's `key`} of setting at lr and variant over cfg.seeds, where done and known."""
  out = {}
  for seed in cfg.seeds:
    run = runs.get(make_point(cfg, setting, seed, lr, variant).name)
    if run is not None and run.get(key) is not None:
      out[seed] = run[key]
  return out


def comparisons(cfg, runs: dict, setting: str, chosen_lr: dict) -> dict:
  """Dense against `setting` (each at its chosen lr) over seeds on the test loss (reported), the
  validation loss (which chose the lrs) and the training tail; and each ablation of the MoE arm
  against the same dense runs on the test loss."""
  def pair(key, moe_lr=chosen_lr[setting], variant="", moe_key=None):
    return aggregate({DENSE: arm_losses(cfg, runs, DENSE, chosen_lr[DENSE], "", key),
                      setting: arm_losses(cfg, runs, setting, moe_lr, variant, moe_key or key)})

  out = {"test": pair("test_loss"), "validation": pair("final_eval_loss"),
         "train_loss_last_200_steps": pair("train_loss_last_200_steps"), "ablations": {}}
  for name in cfg.ablations + ("eval_dispatch_as_training",):
    variant, key = ABLATIONS[name]
    if name == "shared_lr":
      out["ablations"][name] = pair("test_loss", moe_lr=chosen_lr[DENSE])
    else:
      out["ablations"][name] = pair("test_loss", variant=variant, moe_key=key)
  return out


def expert_load(cfg, runs: dict, setting: str, lr: float) -> dict:
  """The MoE arm's per-expert share of assignments, mean over its seeds: training's last 100
  steps and the final evaluation (dropless); 1 / E each at perfect balance."""
  import numpy as np

  picked = [r for r in (runs.get(make_point(cfg, setting, s, lr).name) for s in cfg.seeds) if r]
  out = {}
  for key in ("expert_share_train_last_100_steps", "expert_share_eval_final"):
    shares = [r[key] for r in picked if r.get(key)]
    if shares:
      out[key] = np.mean(np.asarray(shares), axis=0).tolist()
  return out


def report(cfg, root: str, points, setting: str, chosen_lr: dict, out_dir: str) -> dict:
  """Writes OUT/results.json and the plot from the done runs among `points` (all of them, unless
  the study is collected early with --partial: then results.json lists the missing runs)."""
  from train import provenance

  records = {r["name"]: r for r in sweep_lib.collect(root, points)}
  base = cfg.base
  tokens_per_step = base.train.batch_size * base.data.seq_len
  runs = {}
  done = [p for p in points if p.name in records]
  for p in done:
    r = records[p.name]
    runs[p.name] = {"name": p.name, **p.meta, "final_eval_loss": r["eval_loss"],
                    "test_loss": r.get("test_loss"), "tokens": r["tokens"], "wall_s": r["wall_s"],
                    **moe_measures.run_summary(sweep_lib.point_dir(root, p.name), tokens_per_step)}
  costs = {s: moe_measures.setting_costs(
      sweep_lib.apply_overrides(base, setting_overrides(base, s)), s, root)
      for s in dict.fromkeys(p.meta["setting"] for p in done)}
  dense_params = costs[DENSE]["params"]["active_non_embedding"] if DENSE in costs else None
  results = {
      "study": "moe_vs_dense", "provenance": provenance.provenance(cfg),
      "machine": sweep_lib.machine_info(), "complete": len(done) == len(points),
      "missing": [p.name for p in points if p.name not in records],
      "train": {"steps": base.train.steps, "batch_size": base.train.batch_size,
                "seq_len": base.data.seq_len, "tokens": base.train.steps * tokens_per_step,
                "tokens_per_active_non_embedding_param":
                    base.train.steps * tokens_per_step / dense_params if dense_params else None,
                "lrs": lrs(cfg), "chosen_lr": chosen_lr, "lr_chosen_on": "validation (eval_loss)"},
      "moe": {k: base.model.moe[k] for k in ("dispatch", "capacity_factor", "eval_dispatch",
                                             "eval_capacity_factor", "init_scale",
                                             "aux_loss_weight", "z_loss_weight", "every")},
      "sweep": sweep_rows(cfg, runs, costs),
      "compare": setting, "compare_chosen_by": "config" if cfg.compare else "sweep",
      "costs": costs, "wall_s_total": sum(r["wall_s"] for r in records.values()), "runs": runs,
  }
  if setting and chosen_lr:
    results["seeds"] = comparisons(cfg, runs, setting, chosen_lr)
    results["expert_load"] = expert_load(cfg, runs, setting, chosen_lr[setting])
  os.makedirs(out_dir, exist_ok=True)
  sweep_lib.write_json(os.path.join(out_dir, "results.json"), results)
  results["plot"] = plot(results, out_dir)
  return results


def sweep_rows(cfg, runs: dict, costs: dict) -> list[dict]:
  """One row per done run of the sweep stage: its losses, parameters, FLOPs and step time beside
  dense's, and its expert load."""
  dense = costs[DENSE]
  rows = []
  for p in sweep_points(cfg):
    if p.name not in runs:
      continue
    s, run = p.meta["setting"], runs[p.name]
    c = costs[s]
    row = {"setting": s, "seed": p.meta["seed"], "lr": p.meta["lr"],
           "final_eval_loss": run["final_eval_loss"], "test_loss": run.get("test_loss"),
           "train_loss_last_200_steps": run["train_loss_last_200_steps"],
           "params_total": c["params"]["total"], "params_active": c["params"]["active"],
           "analytic_flops_ratio_vs_dense":
               c["analytic_train_flops_per_token"] / dense["analytic_train_flops_per_token"],
           "median_step_time_s": run["median_step_time_s"],
           "compiled_flops_ratio_vs_dense":
               c["compiled_train_flops_per_token"] / dense["compiled_train_flops_per_token"]}
    for k in ("mean_drop_fraction", "final_eval_drop_fraction", "final_load_balance_loss",
              "expert_share_last_100_steps"):
      if k in run:
        row[k] = run[k]
    rows.append(row)
  return rows


def plot(results: dict, out_dir: str) -> str:
  """Three panels: the compared arms' validation curves over seeds, the learning-rate sweep, and
  the MoE arm's per-expert load."""
  plt = plots.pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(18, 5.4))
  if results.get("seeds"):
    _plot_curves(axes[0], plt, results)
  _plot_lr_sweep(axes[1], results)
  _plot_load(axes[2], results)
  path = os.path.join(out_dir, "moe_vs_dense.png")
  plots.save(fig, path, dpi=110)
  return path


def _plot_curves(ax, plt, results: dict) -> None:
  import numpy as np

  setting, lr = results["compare"], results["train"]["chosen_lr"]
  test = results["seeds"]["test"]
  for i, arm in enumerate((DENSE, setting)):
    curves = [r for r in results["runs"].values()
              if r["setting"] == arm and r["variant"] == "" and r["lr"] == lr[arm]]
    for r in curves:
      ax.plot([e["tokens"] for e in r["eval"]], [e["eval_loss"] for e in r["eval"]], "-",
              color=plt.cm.tab10(i), lw=0.7, alpha=0.6)
    n = min(len(r["eval"]) for r in curves)
    mean = np.mean([[e["eval_loss"] for e in r["eval"][:n]] for r in curves], axis=0)
    s = test["arms"][arm]
    ci = f" ± {s['ci95']:.3f}" if s["ci95"] is not None else ""
    ax.plot([e["tokens"] for e in curves[0]["eval"][:n]], mean, "-", color=plt.cm.tab10(i), lw=2.2,
            label=f"{arm} (lr {lr[arm]:g}): test {s['mean']:.3f}{ci} (95% CI, {len(curves)} seeds)")
  lo = min(r["final_eval_loss"] for r in results["runs"].values()) - 0.05
  ax.set_ylim(lo, lo + 1.5)
  ax.set(xlabel="training tokens", ylabel="validation loss (dropless evaluation)",
         title=f"dense vs {setting} at equal active parameters (thin: seeds)")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)


def _plot_lr_sweep(ax, results: dict) -> None:
  by_setting: dict[str, list] = {}
  for row in results["sweep"]:
    by_setting.setdefault(row["setting"], []).append((row["lr"], row["final_eval_loss"]))
  for s, pts in by_setting.items():
    pts.sort()
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=s)
  ax.set_xscale("log")
  ax.set(xlabel="learning rate", ylabel="final validation loss",
         title="learning rate per arm (seed of the sweep; chosen on validation)")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)


def _plot_load(ax, results: dict) -> None:
  import numpy as np

  load = results.get("expert_load", {})
  for j, (key, label) in enumerate((("expert_share_train_last_100_steps", "training, last 100 steps"),
                                    ("expert_share_eval_final", "final evaluation (dropless)"))):
    if key in load:
      x = np.arange(len(load[key]))
      ax.bar(x + 0.4 * j - 0.2, load[key], width=0.4, label=label)
      ax.axhline(1 / len(load[key]), color="gray", ls=":", lw=1)
  ax.set(xlabel="expert", ylabel="share of assignments (mean over layers and seeds)",
         title=f"{results['compare']}: per-expert load (dotted: uniform)")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
