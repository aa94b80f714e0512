"""A learning-rate sweep run through the sweep's two paths, timed side by side: every point alone
(the local launcher: one process, each run its own data, compile, training, evaluation and
checkpoint, one after another) against the same points stacked (--stack_runs).

Each arm is one fresh `python -m experiments.mup_transfer` process on a fresh sweep root, timed
from start to exit (interpreter and JAX start-up, data opening, compiles, every step, the final
evaluation, checkpoints, the study's report), so the numbers are what a user waits for. The
sweep's tokenizer and shards are prepared once before timing and copied into each root (neither
arm pays the tokenization). Arms alternate (alone, stacked, stacked, alone, ...) so that load
from other jobs on a shared machine falls on both. Used by experiments/stacked_bench.py --sweep.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Sequence

import ml_collections

from train.studies import mup_transfer
from train.studies import sweep as sweep_lib

SWEEP_FILE = "experiments/configs/sweeps/mup_transfer.py"


def study_flags(width: int, lrs: Sequence[float]) -> list[str]:
  """The muP transfer study's flags for one width, standard parametrization, one seed, lrs."""
  return [f"--sweep={SWEEP_FILE}", f"--sweep.widths=({width},)", "--sweep.parametrizations=('sp',)",
          "--sweep.seeds=(0,)", f"--sweep.lrs={tuple(float(x) for x in lrs)!r}"]


def run_arm(root: str, shared_from: str, flags: Sequence[str], stack_runs: int) -> dict[str, Any]:
  """One arm: a fresh sweep root holding the prepared data, the study run in a new process;
  wall seconds from start to exit and each point's record."""
  if os.path.exists(root):
    shutil.rmtree(root)
  shutil.copytree(shared_from, os.path.join(root, "shared"))
  # Each arm starts with an empty persistent compilation cache of its own (the scripts keep one by
  # default): both pay their compiles as a user's first sweep does, and no arm or repeat loads
  # what another compiled. A caller's JAX_COMPILATION_CACHE_DIR would win over the flag.
  cmd = [sys.executable, "-m", "experiments.mup_transfer", *flags, f"--workdir={root}",
         f"--results_dir={os.path.join(root, 'report')}", f"--stack_runs={stack_runs}",
         f"--compilation_cache={os.path.join(root, 'xla')}"]
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  t0 = time.perf_counter()
  done = subprocess.run(cmd, cwd=sweep_lib.REPO_ROOT, capture_output=True, text=True, env=env)
  wall_s = time.perf_counter() - t0
  if done.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
  with open(os.path.join(root, "report", "results.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  return {"stack_runs": stack_runs, "wall_s": wall_s, "eval_loss": [r["eval_loss"] for r in rows],
          "lrs": [r["lr"] for r in rows]}


def benchmark(scratch: str, cfg: ml_collections.ConfigDict, width: int, lrs: Sequence[float],
              repeats: int) -> dict[str, Any]:
  """Both arms `repeats` times, alternating which goes first; their wall clocks, the ratio of
  the medians (alone over stacked: > 1, stacked is faster) and each point's eval loss in both.
  cfg: the muP transfer sweep's config as study_flags(width, lrs) makes it."""
  prep_root = os.path.join(scratch, "prepared")
  points = mup_transfer.make_points(cfg)
  shared = sweep_lib.prepare_shared(prep_root, sweep_lib.point_config(cfg.base, points[0]))
  flags = study_flags(width, lrs)
  arms: dict[str, list[dict]] = {"alone": [], "stacked": []}
  for r in range(repeats):
    order = ("alone", "stacked") if r % 2 == 0 else ("stacked", "alone")
    for name in order:
      arms[name].append(run_arm(os.path.join(scratch, name), os.path.dirname(shared), flags,
                                len(lrs) if name == "stacked" else 0))
  return summarise(arms, points, cfg)


def summarise(arms: dict[str, list[dict]], points: Sequence[sweep_lib.Point],
              cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  def median(xs):
    xs = sorted(xs)
    return 0.5 * (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2])

  walls = {name: [a["wall_s"] for a in runs] for name, runs in arms.items()}
  losses = {name: runs[-1]["eval_loss"] for name, runs in arms.items()}
  steps, tokens = cfg.base.train.steps, cfg.base.train.batch_size * cfg.base.data.seq_len
  return {
      "runs": len(points), "steps_per_run": steps, "tokens_per_step_per_run": tokens,
      "lrs": arms["alone"][0]["lrs"], "wall_s": walls,
      "median_wall_s": {name: median(w) for name, w in walls.items()},
      "wall_clock_ratio": median(walls["alone"]) / median(walls["stacked"]),
      "wall_clock_ratio_per_repeat": [a / s for a, s in zip(walls["alone"], walls["stacked"])],
      "tokens_per_sec": {name: len(points) * steps * tokens / median(w)
                         for name, w in walls.items()},
      "eval_loss": losses,
      "eval_loss_max_abs_diff": max(abs(a - b) for a, b in zip(losses["alone"],
                                                               losses["stacked"])),
  }


def lr_sensitivity(scratch: str, width: int, lrs: Sequence[float], alone_eval_loss: Sequence[float],
                   rel: float = 2.0 ** -20) -> dict[str, Any]:
  """How far float rounding alone moves a point's result: each lr times (1 + rel) trained alone
  through the sweep (the data prepared by benchmark in scratch), its eval loss beside the alone
  arm's at lr. Where a 1e-6 change of lr moves the loss as far as stacking does, the runs are
  chaotic there and stacked against alone differs by rounding, not by a mix-up."""
  shared = os.path.join(scratch, "prepared", "shared")
  rows = []
  for lr, base_loss in zip(lrs, alone_eval_loss):
    arm = run_arm(os.path.join(scratch, "sensitivity"), shared,
                  study_flags(width, [lr * (1 + rel)]), 0)
    rows.append({"lr": lr, "perturbed_lr": lr * (1 + rel), "alone_eval_loss": base_loss,
                 "perturbed_eval_loss": arm["eval_loss"][0],
                 "abs_diff": abs(arm["eval_loss"][0] - base_loss)})
  return {"relative_lr_perturbation": rel, "rows": rows}
