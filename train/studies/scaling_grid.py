"""The scaling sweep's grid: every (model, compute budget) pair whose tokens per parameter fall in
the sweep's window, as points of train/studies/sweep.py (D = C / 6N, rounded to whole steps).
"""

from __future__ import annotations

from train.studies import sweep as sweep_lib


def budget_label(c: float) -> str:
  return f"{c:.0e}".replace("+", "")


def make_points(sweep) -> list[sweep_lib.Point]:
  """Every (model, budget) whose tokens per parameter fall in the window and whose run is at
  least min_steps long; D = C / 6N, rounded to whole steps."""
  from model.config import ModelConfig, count_params

  base = sweep.base
  tokens_per_step = base.train.batch_size * base.data.seq_len
  lo, hi = sweep.tokens_per_param
  points = []
  for budget in sweep.budgets:
    for n_layers, d_model in sweep.models:
      over = sweep_lib.model_overrides(n_layers, d_model, sweep.head_dim, sweep.ffn_mult)
      cfg = ModelConfig.from_dict(sweep_lib.apply_overrides(base, over).model.to_dict())
      n = count_params(cfg)["non_embedding"]
      d = budget / (6.0 * n)
      steps = round(d / tokens_per_step)
      if not lo <= d / n <= hi or steps < sweep.min_steps:
        continue
      over |= {"train.steps": steps,
               "train.warmup_steps": max(1, round(sweep.warmup_fraction * steps))}
      meta = {"n_layers": n_layers, "d_model": d_model, "budget": float(budget)}
      points.append(sweep_lib.make_point(
          f"L{n_layers}-D{d_model}-C{budget_label(budget)}", base, over, meta))
  if not points:
    raise ValueError("the sweep has no point: widen sweep.tokens_per_param or change the budgets")
  return points

