"""What a checkpoint costs the train steps around it, synchronous against asynchronous saves.

One llmlab train step (train/studies/train_speed.py's llmlab_bench) is stepped in trials of
`before` plain steps, one step that saves a checkpoint through train/checkpoint.py's Checkpointer
(its time counts the save), and `after` plain steps (which an asynchronous write overlaps); then
the checkpointer is closed, its wait for the write timed apart. The trials alternate sync, async,
sync, async, ... in one process, so a machine shared with other jobs slows both modes alike.
Used by experiments/checkpoint_bench.py.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from typing import Any

import jax
import numpy as np

from train import checkpoint as ckpt_lib
from train.studies import train_speed


@dataclasses.dataclass(frozen=True)
class Trial:
  """The step times (seconds) of one trial and the bytes its checkpoint took on disk."""

  mode: str  # "sync" or "async"
  before_s: list[float]
  save_step_s: float
  after_s: list[float]
  close_wait_s: float
  checkpoint_bytes: int


def _timed_step(bench: train_speed.Bench) -> float:
  t0 = time.perf_counter()
  bench.state, out = bench.step(bench.state, bench.batch)
  jax.block_until_ready((bench.state, out))
  return time.perf_counter() - t0


def _bytes_under(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def run_trial(bench: train_speed.Bench, mode: str, directory: str, before: int,
              after: int) -> Trial:
  """One trial in a fresh `directory` (removed afterwards): before steps, a saving step, after
  steps, the close."""
  ckpt = ckpt_lib.Checkpointer(directory, keep=1, every_steps=1, async_save=mode == "async")
  before_s = [_timed_step(bench) for _ in range(before)]
  t0 = time.perf_counter()
  bench.state, out = bench.step(bench.state, bench.batch)
  jax.block_until_ready((bench.state, out))
  ckpt.save(1, bench.state, {"trial": mode})
  save_step_s = time.perf_counter() - t0
  after_s = [_timed_step(bench) for _ in range(after)]
  t0 = time.perf_counter()
  ckpt.close()
  close_wait_s = time.perf_counter() - t0
  size = _bytes_under(os.path.join(directory, "1"))
  shutil.rmtree(directory)
  return Trial(mode, before_s, save_step_s, after_s, close_wait_s, size)


def summarise(trials: list[Trial], mode: str) -> dict[str, Any]:
  """Medians over a mode's trials: the saving step, each step after it, the wait at close, and
  the extra seconds against the median plain step (before-steps of every trial, both modes)."""
  mine = [t for t in trials if t.mode == mode]
  plain = float(np.median([s for t in trials for s in t.before_s]))
  save_step = float(np.median([t.save_step_s for t in mine]))
  after = [float(np.median([t.after_s[i] for t in mine])) for i in range(len(mine[0].after_s))]
  close_wait = float(np.median([t.close_wait_s for t in mine]))
  return {
      "save_step_s_median": save_step,
      "after_steps_s_median": after,
      "close_wait_s_median": close_wait,
      "save_step_overhead_s": save_step - plain,
      "total_overhead_s": save_step - plain + sum(a - plain for a in after) + close_wait,
      "trials": [dataclasses.asdict(t) for t in mine],
  }


def measure(dims: train_speed.Dims, *, rounds: int, before: int, after: int,
            directory: str) -> dict[str, Any]:
  """rounds x (a sync trial, then an async one) on one compiled step; the result for
  results.json (no provenance: the script adds it)."""
  bench = train_speed.llmlab_bench(dims, "float32", "auto", scan_layers=False)
  params = sum(x.size for x in jax.tree.leaves(bench.state["params"]))
  compile_s = _timed_step(bench)  # compiles
  trials = []
  for r in range(rounds):
    for mode in ("sync", "async"):
      trials.append(run_trial(bench, mode, os.path.join(directory, f"{mode}-{r}"), before, after))
  plain = [s for t in trials for s in t.before_s]
  return {
      "dims": dataclasses.asdict(dims), "params": params, "device": jax.devices()[0].device_kind,
      "first_step_s_with_compile": compile_s, "rounds": rounds, "steps_before": before,
      "steps_after": after, "plain_step_s_median": float(np.median(plain)),
      "plain_step_s_all": plain, "checkpoint_bytes": trials[0].checkpoint_bytes,
      "sync": summarise(trials, "sync"), "async": summarise(trials, "async"),
  }

