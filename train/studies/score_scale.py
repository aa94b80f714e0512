"""The 1/sqrt(d_k) study's points and report: part (a) per d_k (train/studies/softmax_init.py),
part (b) per head width, arm and seed (train/studies/score_scale_training.py).

Each point's record is cached by train/studies/sweep.py's records launcher, its name ending in a
hash of its settings; report() writes results.json and attention_scale.png.
"""

from __future__ import annotations

import hashlib
import json
import os

from train import plots, provenance
from train.studies import score_scale_training as training
from train.studies import softmax_init
from train.studies import sweep as sweep_lib


def make_points(cfg) -> list[sweep_lib.Point]:
  """One point per d_k of part (a), then one per (seed, d_head, arm) of part (b); each named
  after its part and a hash of the settings it depends on."""

  def named(label: str, settings, meta: dict) -> sweep_lib.Point:
    key = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:6]
    return sweep_lib.Point(f"{label}-{key}", {}, meta)

  icfg, tcfg = cfg.init.to_dict(), cfg.train.to_dict()
  icfg.pop("d_k")
  tcfg.pop("d_head")
  seeds = tcfg.pop("seeds")
  points = [named(f"init-{d}", [d, icfg, softmax_init.INIT_VERSION], {"part": "init", "d_k": d})
            for d in cfg.init.d_k]
  for seed in seeds:
    for d in cfg.train.d_head:
      for scaled in (True, False):
        arm = "scaled" if scaled else "unscaled"
        label = f"train-{d}-{arm}" + (f"-seed{seed}" if seed else "")
        points.append(named(label, [d, scaled, {**tcfg, "seed": seed}],
                            {"part": "train", "d_head": d, "scaled": scaled, "seed": seed}))
  return points


def compute_point(cfg, workdir: str, point: sweep_lib.Point) -> dict:
  """The record of one point: part (a)'s statistics or part (b)'s trained arm."""
  if point.meta["part"] == "init":
    return softmax_init.init_point(cfg.init, point.meta["d_k"])
  return training.train_point(cfg.train, workdir, point.meta["d_head"], point.meta["scaled"],
                              point.meta["seed"])


def plot(init_rows: list[dict], train_rows: list[dict], out_dir: str) -> str:
  plt = plots.pyplot()
  fig, axes = plt.subplots(2, 2, figsize=(11, 8))
  d = [r["d_k"] for r in init_rows]
  panels = (("var_scores", "variance of the scores (q.k times the scale)", "log"),
            ("entropy", "softmax entropy, nats (mean over queries)", "linear"),
            ("grad_scores_norm", "|d loss / d scores| per query", "log"))
  for ax, (key, title, yscale) in zip(axes.ravel(), panels):
    for arm, color in (("scaled", "tab:blue"), ("unscaled", "tab:red")):
      ax.plot(d, [r[arm][key] for r in init_rows], "o-", color=color, label=f"N(0,1) q, k: {arm}")
      if all("model_init" in r for r in init_rows):
        ax.plot(d, [r["model_init"][arm][key] for r in init_rows], "s--", color=color, alpha=0.6,
                label=f"model init: {arm}")
    if key == "grad_scores_norm":
      for arm, color in (("scaled", "tab:blue"), ("unscaled", "tab:red")):
        ax.plot(d, [r[arm]["grad_scores_norm_median"] for r in init_rows], ":", color=color,
                label=f"N(0,1) q, k: {arm}, median over queries")
    if key == "entropy" and init_rows:
      ax.axhline(init_rows[0]["log_n_keys"], color="gray", ls=":", label="uniform: log S")
    ax.set_xscale("log", base=2)
    ax.set_yscale(yscale)
    ax.set_xlabel("d_k")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
  ax = axes[1, 1]
  for arm, color in (("scaled", "tab:blue"), ("unscaled", "tab:red")):
    rows = [r for r in train_rows if r["scaled"] == (arm == "scaled")]
    dh = sorted({r["d_head"] for r in rows})
    mean = [sum(r["val_loss"] for r in rows if r["d_head"] == d) / sum(r["d_head"] == d for r in rows)
            for d in dh]
    ax.plot(dh, mean, "o-", color=color, label=f"{arm}: mean over seeds")
    ax.plot([r["d_head"] for r in rows], [r["val_loss"] for r in rows], "x", color=color, alpha=0.6,
            label=f"{arm}: each seed")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("d_head (fixed width: heads = d_model / d_head)")
  ax.set_title("held-out loss after training (nats/token)", fontsize=10)
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8)
  path = os.path.join(out_dir, "attention_scale.png")
  plots.save(fig, path, dpi=110)
  return path


def arm_name(d_head: int, scaled: bool) -> str:
  return f"{d_head}-{'scaled' if scaled else 'unscaled'}"


def _by_arm(train_rows: list[dict]) -> dict:
  """(d_head, scaled) -> the records of that arm, one per seed; sorted by d_head, scaled first."""
  out = {}
  for r in sorted(train_rows, key=lambda r: (r["d_head"], not r["scaled"], r["seed"])):
    out.setdefault((r["d_head"], r["scaled"]), []).append(r)
  return out


def report(cfg, workdir: str, points, out_dir: str) -> dict:
  records = sweep_lib.collect(workdir, points)
  init_rows = sorted((r for r in records if r["meta"]["part"] == "init"), key=lambda r: r["d_k"])
  # Records written before seeds were a setting are seed 0's.
  train_rows = [{"seed": 0, **r} for r in records if r["meta"]["part"] == "train"]
  os.makedirs(out_dir, exist_ok=True)
  keys = ("var_qk", "var_scores", "entropy", "max_prob", "saturated_share", "grad_scores_norm",
          "grad_scores_norm_median", "grad_q_norm")
  summary = {
      "study": "attention_scale", "machine": sweep_lib.machine_info(),
      "settings": {"init": cfg.init.to_dict(), "train": cfg.train.to_dict()},
      "init": {str(r["d_k"]): {
          "log_n_keys": round(r["log_n_keys"], 4),
          **{arm: {k: r[arm][k] for k in keys} for arm in ("scaled", "unscaled")},
          **({"model_init": {"var_q_entry": r["model_init"]["var_q_entry"],
                             **{arm: {k: r["model_init"][arm][k] for k in keys}
                                for arm in ("scaled", "unscaled")}}} if "model_init" in r else {})}
          for r in init_rows},
      "train": {arm_name(d, scaled): {
          "d_head": d, "n_heads": cfg.train.d_model // d, "scaled": scaled,
          "val_loss_mean": sum(r["val_loss"] for r in rows) / len(rows),
          "seeds": {str(r["seed"]): {k: r[k] for k in (
              "val_loss", "final_train_loss", "val_tokens", "trained_attention", "train_wall_s")}
              for r in rows}}
          for (d, scaled), rows in _by_arm(train_rows).items()},
      "curves": {f"{arm_name(r['d_head'], r['scaled'])}-seed{r['seed']}": r["curve"] for r in train_rows},
  }
  summary["plot"] = os.path.basename(plot(init_rows, train_rows, out_dir))
  sweep_lib.write_json(os.path.join(out_dir, "results.json"), provenance.stamp(summary, cfg))
  return summary

