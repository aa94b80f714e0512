"""Warmup-stable-decay scaling sweeps: one stable run per model size, one cooldown per budget.

Hägele et al. 2024: a constant learning rate after warmup, then a decay over the last 10-20% of
the steps, matches a tuned cosine schedule; since the stable phase does not depend on the final
length, one stable run per size serves every token budget. For a model that costs F training
FLOPs per token (model/config.py flops_per_token, counted in full), on T tokens per step, budget C
is steps_C = round(C / (F T)) steps. Its cooldown is the last decay_fraction of them: a branch of
the size's stable run at start_C = TrainSettings.decay_start (steps_C less decay_fraction of it,
rounded half up), trained to steps_C with the WSD schedule, whose decay starts there. The stable
run trains to the largest start_C of its size and keeps a checkpoint at every start_C.

Cost in steps, per size: max(start_C) + sum(steps_C - start_C), against sum(steps_C) for a sweep
that trains every point from scratch (compute_saved).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import ml_collections

from train import config as config_lib
from train.studies import sweep as sweep_lib


@dataclasses.dataclass(frozen=True)
class Size:
  """One model size: its label (L2-D64), the model.* overrides that make it, its training FLOPs
  per token and the parameters its tokens-per-parameter window counts."""

  label: str
  overrides: dict
  flops_per_token: float
  params: int
  meta: dict = dataclasses.field(default_factory=dict)  # recorded with its points (depth, width)


@dataclasses.dataclass(frozen=True)
class Cooldown:
  budget: float  # training FLOPs, counted in full
  steps: int  # the branch ends here
  start: int  # and starts from the stable run's checkpoint here


@dataclasses.dataclass(frozen=True)
class SizePlan:
  size: Size
  cooldowns: tuple[Cooldown, ...]  # by budget, ascending

  @property
  def stable_steps(self) -> int:
    return max(c.start for c in self.cooldowns)


def decay_start(steps: int, decay_fraction: float) -> int:
  """The first step of the decay, as train.schedule=wsd places it (train/config.py): the branch
  starts from the stable run's checkpoint there and its schedule decays from the next update."""
  return steps - config_lib.wsd_decay_steps(decay_fraction, steps)


def plan(sizes: Sequence[Size], budgets: Sequence[float], *, tokens_per_step: int,
         decay_fraction: float, min_steps: int, tokens_per_param: tuple[float, float],
         warmup_steps: dict) -> list[SizePlan]:
  """Every (size, budget) whose tokens per parameter fall in the window and whose run is at least
  min_steps long, grouped by size; sizes with no budget left are dropped. warmup_steps maps a
  size's label to its warmup, which must end before its first cooldown starts."""
  if not 0 < decay_fraction < 1:
    raise ValueError(f"sweep.decay_fraction={decay_fraction} must be in (0, 1)")
  lo, hi = tokens_per_param
  plans = []
  for size in sizes:
    cooldowns = []
    for budget in sorted(budgets):
      steps = round(budget / (size.flops_per_token * tokens_per_step))
      tokens = steps * tokens_per_step
      if steps < min_steps or not lo <= tokens / size.params <= hi:
        continue
      cooldowns.append(Cooldown(float(budget), steps, decay_start(steps, decay_fraction)))
    if not cooldowns:
      continue
    if warmup_steps[size.label] >= cooldowns[0].start:
      raise ValueError(
          f"{size.label}: warmup of {warmup_steps[size.label]} steps does not end before its first "
          f"cooldown starts (step {cooldowns[0].start}); raise sweep.min_steps or shorten warmup")
    plans.append(SizePlan(size, tuple(cooldowns)))
  if not plans:
    raise ValueError("the sweep has no point: widen sweep.tokens_per_param or change the budgets")
  return plans


def compute_saved(plans: Sequence[SizePlan], tokens_per_step: int) -> dict:
  """Training steps and FLOPs (counted in full) of the WSD sweep against a sweep that trains
  every point from scratch (one cosine schedule per point), at the same points."""
  def wsd(p: SizePlan) -> int:
    return p.stable_steps + sum(c.steps - c.start for c in p.cooldowns)

  def scratch(p: SizePlan) -> int:
    return sum(c.steps for c in p.cooldowns)

  out = {"wsd_steps": sum(wsd(p) for p in plans), "scratch_steps": sum(scratch(p) for p in plans),
         "wsd_flops": sum(p.size.flops_per_token * tokens_per_step * wsd(p) for p in plans),
         "scratch_flops": sum(p.size.flops_per_token * tokens_per_step * scratch(p) for p in plans)}
  out["flops_ratio"] = out["wsd_flops"] / out["scratch_flops"]
  return out


GROWS = ("train.steps", "checkpoint.keep_steps")  # what a stable run may be asked more of


def reopen_extended(root: str, points: Sequence[sweep_lib.Point]) -> list[str]:
  """Stable runs finished shorter than now asked (a budget added to the sweep): their done
  record is set aside (result.json -> result.<steps>.json), so the sweep resumes them from their
  last checkpoint up to the new length; the constant learning rate makes the extension exact.
  Returns the reopened names. A new budget whose cooldown starts inside the part already trained
  finds no checkpoint there and stops with one line naming the saved steps."""
  reopened = []
  for p in points:
    record = sweep_lib.load_result(root, p.name)
    if p.meta.get("role") != "stable" or record is None:
      continue
    if record["steps"] < p.overrides["train.steps"]:
      path = os.path.join(sweep_lib.point_dir(root, p.name), sweep_lib.RESULT)
      os.replace(path, path.replace(".json", f".{record['steps']}.json"))
      reopened.append(p.name)
  return reopened


def ready(root: str, points: Sequence[sweep_lib.Point]) -> list[sweep_lib.Point]:
  """The points a scheduler may start now: every stable run, and the cooldowns whose stable run
  is done (the print and slurm launchers run points in parallel; the local one in order)."""
  done = {p.name for p in points if sweep_lib.load_result(root, p.name) is not None}
  return [p for p in points if p.meta.get("role") != "cooldown" or p.meta["parent"] in done]


def stable_name(plan_: SizePlan) -> str:
  return f"{plan_.size.label}-stable"


def points(plans: Sequence[SizePlan], base: ml_collections.ConfigDict, root: str, *,
           decay_fraction: float, decay_shape: str, warmup_steps: dict,
           extra: dict | None = None) -> list[sweep_lib.Point]:
  """The sweep's points, every stable run before any cooldown (the local launcher runs them in
  order, and a cooldown needs its stable checkpoint). extra: overrides of every point (the
  learning rate, the parametrization)."""
  extra = dict(extra or {})
  stables, branches = [], []
  for p in plans:
    common = {**p.size.overrides, **extra, "train.warmup_steps": warmup_steps[p.size.label]}
    starts = tuple(c.start for c in p.cooldowns)
    # Its length is left out of its name: a larger budget later extends the same stable run.
    stable = sweep_lib.make_point(
        stable_name(p), base,
        {**common, "train.steps": p.stable_steps, "train.schedule": "constant",
         "checkpoint.keep_steps": starts},
        {**p.size.meta, "label": p.size.label, "role": "stable", "params": p.size.params,
         "flops_per_token": p.size.flops_per_token}, grows=GROWS)
    stables.append(stable)
    for c in p.cooldowns:
      parent = sweep_lib.point_dir(root, stable.name)
      branches.append(sweep_lib.make_point(
          f"{p.size.label}-C{c.budget:.0e}".replace("+", ""), base,
          {**common, "train.steps": c.steps, "train.schedule": "wsd",
           "train.decay_fraction": decay_fraction, "train.decay_shape": decay_shape,
           "train.init_from": f"{parent}:{c.start}"},
          {**p.size.meta, "label": p.size.label, "role": "cooldown", "budget": c.budget,
           "start": c.start,
           "params": p.size.params, "flops_per_token": p.size.flops_per_token,
           "parent": stable.name}))
  return stables + branches
