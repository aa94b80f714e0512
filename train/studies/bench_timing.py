"""Timing helpers the benchmarks share: the best of a few calls of an already compiled function."""

from __future__ import annotations

import time
from typing import Any, Callable


def best_time(fn: Callable[[], Any], repeats: int) -> float:
  """Seconds of the fastest of `repeats` calls (fn must block until its result is ready)."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times)
