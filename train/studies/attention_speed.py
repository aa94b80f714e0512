"""Attention forward+backward against sequence length, per implementation: memory and time.

For every implementation and n, grad(sum(attention(q, k, v) * cotangent)) is compiled and the
compiler's temporary memory recorded (`memory_analysis().temp_size_in_bytes`: every buffer besides
the inputs and the outputs, so the score matrix and the saved residuals), then the compiled
functions are timed, interleaved rep by rep. Compiling allocates nothing, so memory is known even
where running would not fit. Used by experiments.attention_bench and experiments.accelerator's
attention section (which runs without ml_collections: nothing here imports it; the whole train
step's memory is train/studies/train_step_memory.py).

FLOPs: 4 n^2 Dh H per sequence forward (two matmuls of 2 n^2 Dh), half that when causal; the
backward is counted as 2.5x the forward (five matmuls, two of them recomputing the forward),
so forward+backward = 3.5x the forward.
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from model.attention import attention, available_implementations
from train import plots


def attention_flops(n: int, *, batch: int, heads: int, head_dim: int, causal: bool) -> float:
  """Forward+backward FLOPs of one call: 3.5 x (4 n^2 Dh H per sequence, halved when causal)."""
  forward = 4.0 * n * n * head_dim * heads * batch
  return 3.5 * forward * (0.5 if causal else 1.0)


def compile_fwd_bwd(impl: str, n: int, *, batch: int, heads: int, kv_heads: int, head_dim: int,
                    dtype, causal: bool):
  """grad(sum(attention(q, k, v) * cotangent)) compiled for sequences of n (not run)."""

  def loss(q, k, v, ct):
    out = attention(q, k, v, implementation=impl, causal=causal)
    return jnp.sum(out.astype(jnp.float32) * ct)

  shapes = [jax.ShapeDtypeStruct(s, dtype) for s in (
      (batch, n, heads, head_dim), (batch, n, kv_heads, head_dim), (batch, n, kv_heads, head_dim))]
  shapes.append(jax.ShapeDtypeStruct((batch, n, heads, head_dim), jnp.float32))
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*shapes).compile()


def time_interleaved(compiled: dict, n: int, *, batch: int, heads: int, kv_heads: int,
                     head_dim: int, dtype, reps: int) -> dict:
  """Min seconds per call of each compiled function (compile_fwd_bwd's), their calls interleaved
  rep by rep.

  Interleaving keeps the comparison fair on a shared machine: a burst of load from elsewhere
  slows every implementation's rep, not one implementation's whole series.
  """
  keys = jax.random.split(jax.random.key(n), 4)
  args = [jax.random.normal(keys[0], (batch, n, heads, head_dim), dtype),
          jax.random.normal(keys[1], (batch, n, kv_heads, head_dim), dtype),
          jax.random.normal(keys[2], (batch, n, kv_heads, head_dim), dtype),
          jax.random.normal(keys[3], (batch, n, heads, head_dim), jnp.float32)]
  for fn in compiled.values():
    jax.block_until_ready(fn(*args))  # warm-up
  times = {name: [] for name in compiled}
  for _ in range(reps):
    for name, fn in compiled.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - t0)
  return {name: min(ts) for name, ts in times.items()}


def log_log_slope(ns, values) -> float:
  """Least-squares slope of log(value) against log(n): 1 is linear growth, 2 quadratic."""
  return float(np.polyfit(np.log(ns), np.log(values), 1)[0])


def sweep(impls: list[str], sizes: list[int], shape: dict, *, causal: bool, reps: int,
          reference_limit_gib: float, skip_check_n: int) -> tuple[dict, Optional[float]]:
  """({impl: {n: point}}, seconds of flash non-causal at skip_check_n or None).

  shape: batch, heads, kv_heads, head_dim, dtype. A point holds temp_bytes and compile_s, then
  time_s and tflops where it ran, `skipped` where reference's memory passes the limit, `error`
  where the implementation rejects the shape."""
  limit = reference_limit_gib * 2 ** 30
  results: dict = {impl: {} for impl in impls}
  full_time = None  # flash without the causal mask at skip_check_n
  flops = {n: attention_flops(n, batch=shape["batch"], heads=shape["heads"],
                              head_dim=shape["head_dim"], causal=causal) for n in sizes}
  for n in sizes:
    to_time = {}
    for impl in impls:
      try:
        t0 = time.perf_counter()
        compiled = compile_fwd_bwd(impl, n, causal=causal, **shape)
        compile_s = time.perf_counter() - t0
      except Exception as e:  # a kernel that rejects this shape: record why, go on
        results[impl][n] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        print(f"n={n:6d} {impl:9s} compile failed: {results[impl][n]['error']}", flush=True)
        continue
      temp = int(compiled.memory_analysis().temp_size_in_bytes)
      results[impl][n] = {"temp_bytes": temp, "compile_s": round(compile_s, 2)}
      if impl == "reference" and temp > limit:
        results[impl][n]["skipped"] = (
            f"temp memory {temp / 2**30:.1f} GiB > limit {reference_limit_gib} GiB")
      else:
        to_time[impl] = compiled
    if causal and n == skip_check_n and "flash" in to_time:
      to_time["flash non-causal"] = compile_fwd_bwd("flash", n, causal=False, **shape)
    seconds = time_interleaved(to_time, n, reps=reps, **shape)
    full_time = seconds.pop("flash non-causal", full_time)
    for impl in impls:
      point = results[impl].get(n, {})
      if impl in seconds:
        point.update(time_s=seconds[impl], tflops=flops[n] / seconds[impl] / 1e12)
      if "temp_bytes" in point:
        shown = (f"{point['time_s'] * 1e3:9.1f} ms" if "time_s" in point
                 else f"  skipped ({point['skipped']})")
        print(f"n={n:6d} {impl:9s} temp {point['temp_bytes'] / 2**20:10.1f} MiB {shown}", flush=True)
    del to_time
  return results, full_time


def summarise(results: dict, sizes: list[int], full_time: Optional[float], *, skip_check_n: int,
              train_step_temp: dict, on_cpu: bool) -> dict:
  """Memory slopes, flash / reference ratios, causal / full time, the train steps' memory
  (train_step_temp, as given) and, on a CPU, the goals the docs state."""
  # The fit over all n, and the slope of the last doubling: flash carries a constant (one tile of
  # scores per head), so its slope approaches 1 from below as n grows; reference's approaches 2.
  summary: dict = {"memory_slope": {}, "memory_slope_last_doubling": {}}
  for impl, points in results.items():
    ns = sorted(n for n, p in points.items() if "temp_bytes" in p)
    if len(ns) >= 2:
      mem = [points[n]["temp_bytes"] for n in ns]
      summary["memory_slope"][impl] = log_log_slope(ns, mem)
      summary["memory_slope_last_doubling"][impl] = log_log_slope(ns[-2:], mem[-2:])

  def ratio(num, den, n, key):
    p, q = results.get(num, {}).get(n, {}), results.get(den, {}).get(n, {})
    return p[key] / q[key] if key in p and key in q else None

  summary["flash_over_reference_memory"] = {n: ratio("flash", "reference", n, "temp_bytes") for n in sizes}
  summary["flash_over_reference_time"] = {n: ratio("flash", "reference", n, "time_s") for n in sizes}
  if full_time is not None:
    causal_s = results["flash"][skip_check_n]["time_s"]
    summary["flash_causal_over_full_time"] = {
        "n": skip_check_n, "causal_s": causal_s, "full_s": full_time,
        "ratio": causal_s / full_time}
  summary["train_step_temp_bytes"] = train_step_temp
  if on_cpu:
    mem_8k = summary["flash_over_reference_memory"].get(8192)
    time_2k = summary["flash_over_reference_time"].get(2048)
    summary["goals"] = {
        "flash memory slope <= 1.1": summary["memory_slope"].get("flash", 9) <= 1.1,
        "flash memory at 8192 <= 1/10 of reference": mem_8k is not None and mem_8k <= 0.1,
        "flash fwd+bwd time at 2048 <= 1.5x reference": time_2k is not None and time_2k <= 1.5,
    }
  return summary


def measure_implementations(s: dict, on_cpu: bool) -> dict:
  """experiments.accelerator's attention section: every implementation this backend has at each
  n of s["attention"], causal: compiled temporary memory, time (min over reps) and TFLOP/s."""
  a = dict(s["attention"])
  ns, reps = a.pop("ns"), a.pop("reps")
  dtype = jnp.float32 if on_cpu else jnp.bfloat16
  shape = dict(a, dtype=dtype)
  rows = []
  for n in ns:
    compiled = {}
    for impl in available_implementations():
      row = {"implementation": impl, "n": n}
      try:
        compiled[impl] = compile_fwd_bwd(impl, n, causal=True, **shape)
        row["temp_bytes"] = int(compiled[impl].memory_analysis().temp_size_in_bytes)
      except Exception as e:  # noqa: BLE001 - a kernel that rejects this shape: say why, go on
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
      rows.append(row)
    seconds = time_interleaved(compiled, n, reps=reps, **shape) if compiled else {}
    flops = attention_flops(n, batch=a["batch"], heads=a["heads"], head_dim=a["head_dim"],
                            causal=True)
    for row in rows[-len(available_implementations()):]:
      if row["implementation"] in seconds:
        row["time_s"] = seconds[row["implementation"]]
        row["tflops"] = flops / row["time_s"] / 1e12
  return {"dtype": jnp.dtype(dtype).name, **a, "reps": reps, "time": "min over reps", "rows": rows}


def _title(record: dict) -> str:
  return (f"{record['device']} ({record['platform']}), B={record['batch']} H={record['heads']} "
          f"K={record['kv_heads']} Dh={record['head_dim']} {record['dtype']}"
          f"{' causal' if record['causal'] else ''}, forward+backward")


def _plot_memory(plt: Any, results: dict, summary: dict, record: dict, out: str) -> None:
  fig, ax = plt.subplots(figsize=(7, 5))
  for impl, points in results.items():
    ns = sorted(n for n, p in points.items() if "temp_bytes" in p)
    if not ns:
      continue
    mib = [points[n]["temp_bytes"] / 2 ** 20 for n in ns]
    slope = summary["memory_slope"].get(impl)
    label = impl + (f" (slope {slope:.2f})" if slope is not None else "")
    (line,) = ax.plot(ns, mib, "o-", label=label)
    skipped = [(n, m) for n, m in zip(ns, mib) if "skipped" in points[n]]
    if skipped:  # compiled but too big to run here: hollow markers
      ax.plot(*zip(*skipped), "o", mfc="white", color=line.get_color(),
              label=f"{impl}: compiled, not run (> {record['reference_limit_gib']} GiB)")
  _finish(fig, ax, "compiled temporary memory (MiB)", record, os.path.join(out, "memory.png"))


def _finish(fig: Any, ax: Any, ylabel: str, record: dict, path: str) -> None:
  """Log-log axes against n (base 2), the run's title, grid, legend; saved to path."""
  ax.set(xscale="log", yscale="log", xlabel="sequence length n", ylabel=ylabel)
  ax.set_xscale("log", base=2)
  ax.set_title(_title(record), fontsize=8)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  plots.save(fig, path, dpi=120)


def _plot_time(plt: Any, results: dict, record: dict, out: str) -> None:
  fig, ax = plt.subplots(figsize=(7, 5))
  for impl, points in results.items():
    ns = sorted(n for n, p in points.items() if "time_s" in p)
    if ns:
      ax.plot(ns, [points[n]["time_s"] * 1e3 for n in ns], "o-", label=impl)
  _finish(fig, ax, "forward+backward time (ms)", record, os.path.join(out, "time.png"))


def plot(results: dict, summary: dict, record: dict, out: str) -> None:
  """out/memory.png (compiled temporary memory against n) and out/time.png."""
  plt = plots.pyplot()
  _plot_memory(plt, results, summary, record, out)
  _plot_time(plt, results, record, out)
