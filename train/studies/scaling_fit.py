"""The scaling sweep's report: the finished runs as a table, the Chinchilla law and the isoFLOP
exponents fitted to them with bootstrap intervals (train/studies/scaling_law.py), and the plots
loss_vs_flops.png and isoflop.png.
"""

from __future__ import annotations

import os

from train import plots
from train.studies import sweep as sweep_lib


# Chinchilla's published fit (REFERENCES.md), printed beside ours.
CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


ACCOUNTINGS = ("kaplan", "full")


def runs_table(records: list[dict], accounting: str = "kaplan") -> list[dict]:
  """One row per finished run with a budget (a WSD sweep's stable runs have none): what the fits
  and plots read. accounting "kaplan": N the non-embedding parameters, C = 6 N D (today's
  protocol); "full": N every parameter, C the training FLOPs counted in full (model/config.py
  flops_per_token: every matmul, the head, attention's score and value products)."""
  if accounting not in ACCOUNTINGS:
    raise ValueError(f"sweep.accounting={accounting!r} is unknown; allowed: {', '.join(ACCOUNTINGS)}")
  full = accounting == "full"
  return [{"name": r["name"], "n_layers": r["meta"]["n_layers"], "d_model": r["meta"]["d_model"],
           "budget": r["meta"]["budget"], "N": r["params"] if full else r["params_non_embedding"],
           "params": r["params"], "params_non_embedding": r["params_non_embedding"],
           "D": r["tokens"], "C": r["flops"] if full else r["flops_6nd"], "flops": r["flops"],
           "flops_6nd": r["flops_6nd"], "eval_loss": r["eval_loss"],
           "test_loss": r.get("test_loss"), "train_loss": r["loss"], "wall_s": r["wall_s"],
           "cpu_s": r["cpu_s"]} for r in records if "budget" in r["meta"]]


def reported_loss(rows: list[dict]) -> str:
  """The loss the fits report: the test split's when every run has one (settings were chosen on
  the validation split), else the validation loss (a sweep without train.test_batches)."""
  return "test_loss" if rows and all(r.get("test_loss") is not None for r in rows) else "eval_loss"


def fit(rows: list[dict], cfg, loss_key: str = "eval_loss") -> dict:
  """The Chinchilla fit and isoFLOP exponents of rows[loss_key], each with bootstrap intervals.
  The bootstrap refits start from cfg.bootstrap_starts best starts of the full fit, or with
  bootstrap_starts 0 from the whole grid cfg.bootstrap_grid (each resample its own optimum)."""
  import numpy as np

  from train.studies import scaling_law as sl

  n = np.array([r["N"] for r in rows], float)
  d = np.array([r["D"] for r in rows], float)
  loss = np.array([r[loss_key] for r in rows], float)
  budget = np.array([r["budget"] for r in rows], float)
  out: dict = {"n_runs": len(rows), "loss": loss_key, "chinchilla_reference": CHINCHILLA}
  ci = lambda vals: sl.interval(vals, cfg.level)  # noqa: E731
  if len(rows) >= 5:
    law, ranked = sl.fit_chinchilla(n, d, loss, delta=cfg.delta, inits=sl.init_grid(cfg.grid),
                                    max_iter=cfg.max_iter)
    starts = (ranked[:cfg.bootstrap_starts] if cfg.get("bootstrap_starts", 0)
              else sl.init_grid(cfg.get("bootstrap_grid", cfg.grid)))
    boots = sl.bootstrap_chinchilla(n, d, loss, n_resamples=cfg.bootstrap, seed=cfg.seed,
                                    inits=starts, delta=cfg.delta,
                                    max_iter=cfg.max_iter) if cfg.bootstrap else []
    out["bootstrap_starts"] = len(starts)
    keys = ("E", "A", "B", "alpha", "beta", "n_exponent", "d_exponent")
    out["law"] = law.to_dict()
    out["law_ci"] = {k: ci([getattr(b, k) for b in boots]) for k in keys}
    out["law_starts"] = len(ranked)
  else:
    out["law"] = None
    out["law_skipped"] = f"the 5-parameter law needs at least 5 finished runs, got {len(rows)}"
  iso = sl.fit_isoflop(budget, n, loss)
  if iso is not None:
    boots = sl.bootstrap_isoflop(budget, n, loss, n_resamples=cfg.bootstrap, seed=cfg.seed)
    out["isoflop"] = iso.to_dict()
    out["isoflop_ci"] = {k: ci([getattr(b, k) for b in boots])
                         for k in ("n_exponent", "d_exponent")}
    out["isoflop_ci_resamples"] = len(boots)
  else:
    out["isoflop"] = None
    out["isoflop_skipped"] = "fewer than two budgets have an interior minimum"
  out["level"] = cfg.level
  return out


def plot(rows: list[dict], fits: dict, out_dir: str) -> list[str]:
  """loss_vs_flops.png and isoflop.png in out_dir; returns their paths."""
  from train.studies import scaling_law as sl

  law = sl.ChinchillaFit(**{k: fits["law"][k] for k in ("E", "A", "B", "alpha", "beta")}) \
      if fits.get("law") else None
  return [plot_loss_vs_flops(rows, law, out_dir), plot_isoflop(rows, fits, law, out_dir)]


def plot_loss_vs_flops(rows: list[dict], law, out_dir: str) -> str:
  """Validation loss against compute, one line per model size, with the fitted law's frontier."""
  plt = plots.pyplot()
  import numpy as np
  from matplotlib.ticker import NullFormatter

  sizes = sorted({r["N"] for r in rows})
  colors = {n: plt.cm.viridis(i / max(len(sizes) - 1, 1)) for i, n in enumerate(sizes)}
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for n_ in sizes:
    pts = sorted((r["C"], r["eval_loss"]) for r in rows if r["N"] == n_)
    ax.plot(*zip(*pts), "o-", color=colors[n_], label=f"N={n_ / 1e3:.3g}k", ms=5, lw=1)
  if law is not None:
    c = np.geomspace(min(r["C"] for r in rows) / 2, max(r["C"] for r in rows) * 2, 100)
    ax.plot(c, law.frontier(c), "k--", lw=1.2, label="fitted frontier")
    ax.set_title(f"L = {law.E:.2f} + {law.A:.3g}/N^{law.alpha:.2f} + {law.B:.3g}/D^{law.beta:.2f}",
                 fontsize=9)
  ax.set_xscale("log")
  ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on a short log axis
  ax.set_xlabel("training FLOPs C = 6ND (N non-embedding)")
  ax.set_ylabel("validation loss (nats/token)")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3, which="both")
  path = os.path.join(out_dir, "loss_vs_flops.png")
  plots.save(fig, path, dpi=110)
  return path


def plot_isoflop(rows: list[dict], fits: dict, law, out_dir: str) -> str:
  """The isoFLOP profiles with their parabola minima, and the compute-optimal N against C."""
  plt = plots.pyplot()
  import numpy as np
  from matplotlib.ticker import NullFormatter

  from train.studies import scaling_law as sl

  budgets = sorted({r["budget"] for r in rows})
  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
  for i, b in enumerate(budgets):
    color = plt.cm.plasma(i / max(len(budgets) - 1, 1) * 0.85)
    pts = sorted((r["N"], r["eval_loss"]) for r in rows if r["budget"] == b)
    ax.plot(*zip(*pts), "o", color=color, label=f"C={b:.0e}")
    found = sl.isoflop_minimum(*zip(*pts)) if len(pts) >= 3 else None
    if len(pts) >= 3:
      coef = np.polyfit(np.log([p[0] for p in pts]), [p[1] for p in pts], 2)
      x = np.geomspace(pts[0][0], pts[-1][0], 50)
      ax.plot(x, np.polyval(coef, np.log(x)), "-", color=color, lw=1)
    if found is not None:
      ax.plot(found[0], found[1], "*", color=color, ms=12, mec="k")
  ax.set_xscale("log")
  ax.xaxis.set_minor_formatter(NullFormatter())
  ax.set_xlabel("non-embedding parameters N")
  ax.set_ylabel("validation loss (nats/token)")
  ax.set_title("isoFLOP profiles (star: parabola minimum)", fontsize=9)
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3, which="both")
  iso = fits.get("isoflop")
  if iso is not None:
    ax2.loglog(iso["budgets"], iso["n_opt"], "o", label="isoFLOP minima")
    c = np.geomspace(min(iso["budgets"]) / 2, max(iso["budgets"]) * 2, 50)
    ax2.loglog(c, 10 ** iso["n_intercept"] * c ** iso["n_exponent"], "-",
               label=f"N_opt ~ C^{iso['n_exponent']:.2f} (isoFLOP)")
    if law is not None:
      ax2.loglog(c, law.optimal_n(c), "k--", label=f"N_opt ~ C^{law.n_exponent:.2f} (fitted law)")
    for axis in (ax2.xaxis, ax2.yaxis):
      axis.set_minor_formatter(NullFormatter())
    ax2.set_xlabel("C = 6ND")
    ax2.set_ylabel("compute-optimal N")
    ax2.legend(fontsize=7)
    ax2.grid(alpha=0.3, which="both")
  else:
    ax2.text(0.5, 0.5, fits.get("isoflop_skipped", ""), ha="center", wrap=True)
    ax2.set_axis_off()
  path = os.path.join(out_dir, "isoflop.png")
  plots.save(fig, path, dpi=110)
  return path


def report(root: str, points, cfg, out_dir: str) -> dict:
  """Writes results.jsonl (one row per finished run), results.json (the fits, with the machine
  and provenance) and the plots into out_dir; returns the summary."""
  from train import provenance

  records = sweep_lib.collect(root, points)
  rows = runs_table(records, cfg.get("accounting", "kaplan"))
  os.makedirs(out_dir, exist_ok=True)
  sweep_lib.write_jsonl(os.path.join(out_dir, "results.jsonl"), rows)
  fits = fit(rows, cfg.fit, reported_loss(rows))
  extra = {"compute": wsd_compute(records)} if cfg.get("mode", "cosine") == "wsd" else {}
  summary = {"study": "scaling", "provenance": provenance.provenance(cfg),
             "machine": sweep_lib.machine_info(), "accounting": cfg.get("accounting", "kaplan"),
             "mode": cfg.get("mode", "cosine"), **extra, "runs": len(rows),
             "points": len(points), "wall_s_total": sum(r["wall_s"] for r in rows),
             "cpu_s_total": sum(r["cpu_s"] for r in rows), **fits}
  sweep_lib.write_json(os.path.join(out_dir, "results.json"), summary)
  summary["plots"] = plot(rows, fits, out_dir) if rows else []
  return summary


def wsd_compute(records: list[dict]) -> dict:
  """Training FLOPs (in full) a WSD sweep spent, against training every cooldown point from
  scratch: its stable runs plus each cooldown's own steps (steps - start of its horizon's
  FLOPs), against the sum of the cooldown points' horizons."""
  stable = sum(r["flops"] for r in records if r["meta"].get("role") == "stable")
  cooldowns = [r for r in records if r["meta"].get("role") == "cooldown"]
  own = sum(r["flops"] * (r["steps"] - r["meta"]["start"]) / r["steps"] for r in cooldowns)
  scratch = sum(r["flops"] for r in cooldowns)
  return {"wsd_flops": stable + own, "scratch_flops": scratch,
          "ratio": (stable + own) / scratch if scratch else None,
          "cpu_s_wsd": sum(r["cpu_s"] for r in records)}
