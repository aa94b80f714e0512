"""muP transfer (Yang et al. 2022, Figure 1): validation loss against learning rate per width.

Every (parametrization, width, learning rate, seed) is one point of a restartable sweep
(train/studies/sweep.py): the same depth, data, batch and steps, only model.d_model (with the
heads at a fixed head width) and train.lr change. Under standard parametrization (SP) the best
learning rate moves as the model widens (usually down); under muP, with model.base_width the
narrowest width, it should stay put. The drift of an arm is best_lr(widest) / best_lr(narrowest).

The best learning rate of a width is the minimum of a parabola in log2(lr) through the grid's
lowest mean loss (over seeds) and its two neighbours; at an edge of the grid it is that grid
value, flagged `interior: False` (the optimum may lie outside the grid).
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import ml_collections

from train import plots
from train.studies import sweep as sweep_lib


def make_points(cfg: ml_collections.ConfigDict) -> list[sweep_lib.Point]:
  points = []
  for param in cfg.parametrizations:
    for width in cfg.widths:
      shape = sweep_lib.model_overrides(cfg.n_layers, width, cfg.head_dim, cfg.ffn_mult)
      for lr in cfg.lrs:
        for seed in cfg.seeds:
          over = {**shape, "model.parametrization": param, "train.lr": float(lr),
                  "train.seed": int(seed)}
          if param == "mup":  # heads keep their width as the model widens: base_head_dim = it
            over |= {"model.base_width": cfg.base_width, "model.base_head_dim": cfg.head_dim}
          meta = {"parametrization": param, "width": width, "lr": float(lr), "seed": int(seed)}
          points.append(sweep_lib.make_point(f"{param}-D{width}-lr{lr:.2g}-s{seed}", cfg.base,
                                             over, meta))
  return points


def parabola_minimum(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, bool]:
  """(x of the minimum, interior) for samples ys at ascending xs: the vertex of the parabola
  through the lowest sample and its two neighbours, or the lowest sample's x at an edge."""
  i = min(range(len(ys)), key=lambda k: ys[k])
  if i == 0 or i == len(ys) - 1:
    return xs[i], False
  (x0, x1, x2), (y0, y1, y2) = xs[i - 1:i + 2], ys[i - 1:i + 2]
  denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
  a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
  b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / denom
  if a <= 0:  # flat or concave around the minimum: no vertex to trust
    return x1, True
  return -b / (2 * a), True


def analyse(rows: Sequence[dict]) -> dict[str, Any]:
  """Per parametrization and width: the mean validation loss at each learning rate (over seeds),
  its seed spread, the best learning rate; per parametrization, the drift of the best rate."""
  out: dict[str, Any] = {}
  for param in sorted({r["parametrization"] for r in rows}):
    arm = {}
    for width in sorted({r["width"] for r in rows if r["parametrization"] == param}):
      mine = [r for r in rows if r["parametrization"] == param and r["width"] == width]
      lrs = sorted({r["lr"] for r in mine})
      by_lr = [[r["eval_loss"] for r in mine if r["lr"] == lr] for lr in lrs]
      means = [sum(v) / len(v) for v in by_lr]
      log2_best, interior = parabola_minimum([math.log2(x) for x in lrs], means)
      arm[str(width)] = {"lrs": lrs, "mean_loss": means, "losses": by_lr,
                         "spread": [max(v) - min(v) for v in by_lr],
                         "best_lr": 2.0 ** log2_best, "interior": interior,
                         "best_loss": min(means)}
    widths = sorted(arm, key=int)
    out[param] = {"widths": arm,
                  "drift": arm[widths[-1]]["best_lr"] / arm[widths[0]]["best_lr"]}
  return out


def plot(analysis: dict, out_dir: str) -> str:
  plt = plots.pyplot()
  params = sorted(analysis)
  fig, axes = plt.subplots(1, len(params), figsize=(5.2 * len(params), 4.0), sharey=True,
                           squeeze=False)
  for ax, param in zip(axes[0], params):
    widths = sorted(analysis[param]["widths"], key=int)
    for i, w in enumerate(widths):
      d = analysis[param]["widths"][w]
      color = plt.cm.viridis(i / max(len(widths) - 1, 1))
      ax.plot(d["lrs"], d["mean_loss"], "o-", color=color, label=f"d_model={w}", ms=4, lw=1)
      ax.axvline(d["best_lr"], color=color, lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("learning rate")
    ax.set_title(f"{param.upper()}: best lr drifts x{analysis[param]['drift']:.2f} over widths",
                 fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
  axes[0][0].set_ylabel("validation loss (nats/token), mean of seeds")
  path = os.path.join(out_dir, "mup_transfer.png")
  plots.save(fig, path, dpi=110)
  return path


def report(root: str, points: Sequence[sweep_lib.Point], cfg: ml_collections.ConfigDict,
           out_dir: str) -> dict[str, Any]:
  """results.jsonl (one row per run), results.json (the analysis, the drifts, provenance) and
  mup_transfer.png in out_dir; returns the summary."""
  from train import provenance

  rows = [{**r["meta"], "eval_loss": r["eval_loss"], "loss": r["loss"], "cpu_s": r["cpu_s"]}
          for r in sweep_lib.collect(root, points)]
  analysis = analyse(rows)
  os.makedirs(out_dir, exist_ok=True)
  sweep_lib.write_jsonl(os.path.join(out_dir, "results.jsonl"), rows)
  summary = {"study": "mup_transfer", "provenance": provenance.provenance(cfg), "runs": len(rows),
             "cpu_s_total": sum(r["cpu_s"] for r in rows),
             "drift": {p: analysis[p]["drift"] for p in analysis}, "arms": analysis}
  sweep_lib.write_json(os.path.join(out_dir, "results.json"), summary)
  plot(analysis, out_dir)
  return summary
