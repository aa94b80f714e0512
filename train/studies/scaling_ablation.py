"""The ablation table of the scaling study (after Porian et al. 2024, Figure 1): the compute-optimal
exponent a (N_opt ~ C^a) and the tokens per parameter at the largest budget, under successive
corrections of the protocol.

Each row is a set of finished runs (a sweep's results.jsonl, written by scaling_fit.report) read
under an accounting: "kaplan" (N non-embedding, C = 6 N D) or "full" (N every parameter, C the
training FLOPs counted in full). Rows (i) and (ii) are the same runs under the two accountings;
later rows are other sweeps (per-size or muP learning rates; WSD cooldown points). For each: the
Chinchilla law's a = beta / (alpha + beta) and E with bootstrap intervals (scaling_fit.fit), the
isoFLOP minima's a with its interval, and D/N at the largest budget with an interior minimum,
D_opt = C / F(N_opt) with F (FLOPs per token under the accounting) interpolated between the sizes
run.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from train.studies import scaling_fit

CHINCHILLA_A = 0.5  # Hoffmann et al. 2022: N_opt ~ C^0.50 (REFERENCES.md), ~20 tokens/parameter


def as_accounting(rows: Sequence[dict], accounting: str) -> list[dict]:
  """results.jsonl rows re-read under an accounting. Rows carry params, params_non_embedding,
  flops and flops_6nd; files written before those columns have N (non-embedding), C (6ND),
  params and flops, which is the same information."""
  full = accounting == "full"
  out = []
  for r in rows:
    n_ne, c_6nd = r.get("params_non_embedding", r["N"]), r.get("flops_6nd", r["C"])
    out.append({**r, "N": r["params"] if full else n_ne, "C": r["flops"] if full else c_6nd})
  return out


def tokens_per_param_at(rows: Sequence[dict], budget: float, n_opt: float) -> float:
  """D / N at the compute-optimal size n_opt of `budget`: D = budget / F(n_opt), F the FLOPs per
  token (C / D of the rows) interpolated in log-log between the sizes run."""
  by_n = sorted({(r["N"], r["C"] / r["D"]) for r in rows})
  log_n, log_f = np.log([n for n, _ in by_n]), np.log([f for _, f in by_n])
  f_opt = float(np.exp(np.interp(np.log(n_opt), log_n, log_f)))
  return budget / f_opt / n_opt


def row(label: str, rows: Sequence[dict], accounting: str, fit_cfg: Any, loss_key: str = "",
        isoflop: bool = True) -> dict[str, Any]:
  """One line of the table: the fits of `rows` under `accounting`. isoflop: whether the runs'
  budget groups are isoFLOP under this accounting (runs budgeted in 6ND are not isoFLOP in full
  FLOPs: their row reports the law's a only)."""
  table = as_accounting(rows, accounting)
  key = loss_key or scaling_fit.reported_loss(table)
  fits = scaling_fit.fit(table, fit_cfg, key)
  out: dict[str, Any] = {"protocol": label, "accounting": accounting, "runs": len(table),
                         "loss": key}
  law, iso = fits.get("law"), fits.get("isoflop")
  if law:
    e_ci = fits["law_ci"]["E"]
    out.update(a_law=law["n_exponent"], a_law_ci=fits["law_ci"]["n_exponent"], E=law["E"],
               E_ci=e_ci, E_identified=bool(e_ci[0] > 1e-3))
  if iso and not isoflop:
    out["isoflop_skipped"] = f"the runs' budgets are not isoFLOP under the {accounting} accounting"
  elif iso:
    largest = max(iso["budgets"])
    n_opt = iso["n_opt"][iso["budgets"].index(largest)]
    out.update(a_isoflop=iso["n_exponent"], a_isoflop_ci=fits["isoflop_ci"]["n_exponent"],
               isoflop_budgets=list(iso["budgets"]), largest_budget=largest, n_opt=n_opt,
               tokens_per_param=tokens_per_param_at(table, largest, n_opt))
  return out


def markdown(rows: Sequence[dict]) -> str:
  """The table as markdown, intervals in brackets."""
  def fmt(x, ci=None):
    if x is None:
      return "-"
    return f"{x:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")

  lines = ["| protocol | runs | a (law) | a (isoFLOP) | D/N at the largest budget | E |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    tpp = r.get("tokens_per_param")
    at = "-" if tpp is None else f"{tpp:.0f} (C = {r['largest_budget']:.0e})"
    e = fmt(r.get("E"), r.get("E_ci")) + ("" if r.get("E_identified", True) else " (not identified)")
    lines.append(f"| {r['protocol']} | {r['runs']} | {fmt(r.get('a_law'), r.get('a_law_ci'))} | "
                 f"{fmt(r.get('a_isoflop'), r.get('a_isoflop_ci'))} | {at} | {e} |")
  return "\n".join(lines)
