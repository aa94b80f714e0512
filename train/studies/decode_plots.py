"""The plots of experiments.decode_bench's sections, one PNG per section (measured by
train/studies/decode_runs.py)."""

from __future__ import annotations

import os
from typing import Any

from train import plots


def _cache(plt: Any, c: dict, out: str) -> None:
  fig, ax = plt.subplots(figsize=(4, 3))
  ax.bar(["no cache", "KV cache"], [c["uncached_tokens_per_s"], c["cached_tokens_per_s"]])
  ax.set_ylabel("tokens / s")
  ax.set_title(f"{c['new_tokens']} new tokens, batch 1: {c['speedup']:.1f}x")
  plots.save(fig, os.path.join(out, "cache.png"), dpi=120)


def _heads(plt: Any, rows: list[dict], out: str) -> None:
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3))
  for ctx in sorted({r["context"] for r in rows}):
    sel = [r for r in rows if r["context"] == ctx and r.get("batch", 1) == 1]
    a1.plot([r["variant"] for r in sel], [r["cache_bytes_per_sequence"] / 2**20 for r in sel],
            "o-", label=f"{ctx}")
    for batch in sorted({r.get("batch", 1) for r in rows}):
      sel = [r for r in rows if r["context"] == ctx and r.get("batch", 1) == batch]
      a2.plot([r["variant"] for r in sel], [r["tokens_per_s"] for r in sel], "o-",
              label=f"context {ctx}, batch {batch}")
  a1.set_ylabel("KV cache MiB / sequence")
  a2.set_ylabel("decode tokens / s")
  a2.set_yscale("log")
  a1.legend(title="context", fontsize=7)
  a2.legend(fontsize=7)
  plots.save(fig, os.path.join(out, "heads.png"), dpi=120)


def _roofline(plt: Any, r: dict, out: str) -> None:
  fig, ax = plt.subplots(figsize=(5, 3))
  labels = [os.path.basename(m["model"]) for m in r["models"]]
  ax.bar(labels, [m["achieved_bytes_per_s"] / 1e9 for m in r["models"]], label="decode, achieved")
  for k, bw in r["bandwidth"].items():
    ax.axhline(bw["copy_bytes_per_s"] / 1e9, ls="--", color="k" if k == "1GiB" else "gray",
               label=f"copy bandwidth ({k})")
  ax.set_ylabel("GB / s")
  ax.legend(fontsize=7)
  plots.save(fig, os.path.join(out, "roofline.png"), dpi=120)


def _speculative(plt: Any, rows: list[dict], out: str) -> None:
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3))
  for temp in sorted({r["temperature"] for r in rows}):
    sel = [r for r in rows if r["temperature"] == temp]
    g = [r["gamma"] for r in sel]
    line, = a1.plot(g, [r["tokens_per_target_call"] for r in sel], "o-", label=f"T={temp:g}")
    a1.plot(g, [r["theory_tokens_per_target_call"] for r in sel], "x--", color=line.get_color(),
            label=f"theory, T={temp:g}")
    line, = a2.plot(g, [r["speedup"] for r in sel], "o-", label=f"measured, T={temp:g}")
    if "predicted_speedup" in sel[0]:
      a2.plot(g, [r["predicted_speedup"] for r in sel], "x--", color=line.get_color(),
              label=f"from pass costs, T={temp:g}")
  a1.set_xlabel("gamma")
  a1.set_ylabel("tokens per target call")
  a2.set_xlabel("gamma")
  a2.set_ylabel("speedup over cached target")
  a2.axhline(1.0, color="gray", lw=0.5)
  a1.legend(fontsize=7)
  a2.legend(fontsize=7)
  plots.save(fig, os.path.join(out, "speculative.png"), dpi=120)


def plot(results: dict, out: str) -> None:
  """One PNG per section present in results: cache, heads, roofline, speculative."""
  plt = plots.pyplot()
  if "cache" in results:
    _cache(plt, results["cache"], out)
  if "heads" in results:
    _heads(plt, results["heads"]["rows"], out)
  if "roofline" in results and results["roofline"]["models"]:
    _roofline(plt, results["roofline"], out)
  if "speculative" in results:
    _speculative(plt, results["speculative"]["rows"], out)
