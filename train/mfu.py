"""Peak FLOP/s of the device, for model FLOPs utilisation (MFU).

MFU = training FLOPs per token * tokens per second / peak FLOP/s. Accelerators use their published
dense peak; a CPU has none, so its peak is measured: the best float32 matmul rate XLA reaches.
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp

# Published dense peaks (FLOP/s), bfloat16 on accelerators.
PUBLISHED_PEAK = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
}


def published_peak(device: jax.Device) -> float | None:
  kind = getattr(device, "device_kind", "")
  for name, peak in PUBLISHED_PEAK.items():
    if name in kind:
      return peak
  return None


def measure_matmul_peak(dtype=jnp.float32, n: int = 2048, seconds: float = 1.0) -> float:
  """Best FLOP/s of an n x n matmul on the default device, over about `seconds` of repeats."""
  key = jax.random.key(0)
  a = jax.random.normal(key, (n, n), dtype)
  b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), dtype)
  mm = jax.jit(lambda x, y: x @ y)
  mm(a, b).block_until_ready()
  best = float("inf")
  end = time.perf_counter() + seconds
  while time.perf_counter() < end or best == float("inf"):
    t0 = time.perf_counter()
    mm(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n**3 / best


PEAK_ENV = "LLMLAB_PEAK_FLOPS"


@functools.lru_cache(maxsize=None)
def peak_flops() -> float:
  """Per-device peak: $LLMLAB_PEAK_FLOPS when set (a fixed reference, so MFU compares across runs
  on a machine whose measured peak wanders with its load, and no second of measuring per
  process), else published for known accelerators, else the measured float32 matmul."""
  if os.environ.get(PEAK_ENV):
    try:
      peak = float(os.environ[PEAK_ENV])
    except ValueError:
      peak = 0.0
    if not peak > 0:
      raise ValueError(f"{PEAK_ENV}={os.environ[PEAK_ENV]!r}: give a positive FLOP/s such as 1e11, "
                       "or unset it to measure")
    return peak
  dev = jax.devices()[0]
  return published_peak(dev) or measure_matmul_peak()
