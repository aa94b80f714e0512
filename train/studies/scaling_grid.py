"""The scaling sweep's grid: every (model, compute budget) pair whose tokens per parameter fall in
the sweep's window, as points of train/studies/sweep.py (D = C / 6N, rounded to whole steps).
"""

from __future__ import annotations

from train.studies import sweep as sweep_lib


def budget_label(c: float) -> str:
  return f"{c:.0e}".replace("+", "")


def make_points(sweep) -> list[sweep_lib.Point]:
  """Every (model, budget) whose tokens per parameter fall in the window and whose run is at
  least min_steps long, each trained from scratch on its own cosine schedule. D = C / 6N with N
  the non-embedding parameters (sweep.accounting "kaplan", the default), or D = C / F with F the
  training FLOPs per token in full and N every parameter ("full"); rounded to whole steps."""
  from model.config import ModelConfig, count_params, flops_per_token

  base = sweep.base
  tokens_per_step = base.train.batch_size * base.data.seq_len
  lo, hi = sweep.tokens_per_param
  full = sweep.get("accounting", "kaplan") == "full"
  points = []
  for budget in sweep.budgets:
    for n_layers, d_model in sweep.models:
      over = sweep_lib.model_overrides(n_layers, d_model, sweep.head_dim, sweep.ffn_mult)
      cfg = ModelConfig.from_dict(sweep_lib.apply_overrides(base, over).model.to_dict())
      n = count_params(cfg)["total" if full else "non_embedding"]
      d = budget / (flops_per_token(cfg, base.data.seq_len) if full else 6.0 * n)
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



def sizes(sweep) -> list:
  """The sweep's models as wsd_plan.Sizes: FLOPs per token counted in full (model/config.py
  flops_per_token: every matmul, the head and attention's score and value products), parameters
  counted in total (embeddings included), as the budgets are."""
  from model.config import ModelConfig, count_params, flops_per_token
  from train.studies import wsd_plan

  out = []
  for n_layers, d_model in sweep.models:
    over = sweep_lib.model_overrides(n_layers, d_model, sweep.head_dim, sweep.ffn_mult)
    cfg = ModelConfig.from_dict(sweep_lib.apply_overrides(sweep.base, over).model.to_dict())
    out.append(wsd_plan.Size(f"L{n_layers}-D{d_model}", over,
                             flops_per_token(cfg, sweep.base.data.seq_len),
                             count_params(cfg)["total"],
                             {"n_layers": n_layers, "d_model": d_model}))
  return out


def make_wsd_points(sweep, root: str) -> tuple[list[sweep_lib.Point], dict]:
  """mode "wsd": per model size one stable run (constant learning rate after warmup) and a
  cooldown branch per budget (train/studies/wsd_plan.py), budgets in full training FLOPs. Warmup
  is warmup_fraction of the size's shortest cooldown run. Returns the points and the plan's
  compute against training every point from scratch (wsd_plan.compute_saved)."""
  from train.studies import wsd_plan

  base = sweep.base
  tokens_per_step = base.train.batch_size * base.data.seq_len
  all_sizes = sizes(sweep)
  warmup = {}
  for size in all_sizes:
    steps = [round(b / (size.flops_per_token * tokens_per_step)) for b in sweep.budgets]
    shortest = min([s for s in steps if s >= sweep.min_steps], default=sweep.min_steps)
    warmup[size.label] = max(1, round(sweep.warmup_fraction * shortest))
  plans = wsd_plan.plan(all_sizes, sweep.budgets, tokens_per_step=tokens_per_step,
                        decay_fraction=sweep.decay_fraction, min_steps=sweep.min_steps,
                        tokens_per_param=tuple(sweep.tokens_per_param), warmup_steps=warmup)
  points = wsd_plan.points(plans, base, root, decay_fraction=sweep.decay_fraction,
                           decay_shape=sweep.decay_shape, warmup_steps=warmup)
  return points, wsd_plan.compute_saved(plans, tokens_per_step)
