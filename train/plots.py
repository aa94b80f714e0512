"""Figures of the experiments and the alignment stages: one matplotlib set-up, one way to save."""

from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np


def pyplot() -> Any:
  """matplotlib.pyplot on the Agg backend: runs write PNGs on machines without a display
  (clusters, CI). Imported on call, so a module that plots only at the end never pays for
  matplotlib at import."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def plot_curves(records: Sequence[dict], panels: Sequence[Union[str, Sequence[str]]], path: str,
                title: str) -> None:
  """One panel per entry of `panels` (a metrics key, or keys drawn on the same axes) over the
  records' steps (metrics.jsonl records, train/metrics.py by_step); keys no record has are left
  out. Fewer than 30 points are drawn as markers; more, which are one batch each, faint with a
  moving average over a twentieth of them."""
  def points(key):
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts], float)

  panels = [[p] if isinstance(p, str) else list(p) for p in panels]
  panels = [[k for k in keys if len(points(k)[0])] for keys in panels]
  panels = [keys for keys in panels if keys]
  plt = pyplot()
  cols = min(3, max(1, len(panels)))
  rows = -(-len(panels) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
  for ax, keys in zip(axes.flat, panels):
    for i, key in enumerate(keys):
      steps, values = points(key)
      color = f"C{i}"
      if len(steps) < 30:
        ax.plot(steps, values, marker="o", markersize=3, color=color, label=key)
      else:
        w = max(2, len(steps) // 20)
        ax.plot(steps, values, alpha=0.3, linewidth=0.8, color=color)
        ax.plot(steps[w - 1:], np.convolve(values, np.ones(w) / w, mode="valid"), linewidth=1.5,
                color=color, label=key)
    ax.set_title(", ".join(keys), fontsize=9)
    if len(keys) > 1:
      ax.legend(fontsize=7)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
  for ax in list(axes.flat)[len(panels):]:
    ax.axis("off")
  fig.suptitle(title)
  save(fig, path, dpi=60)


def save(fig: Any, path: str, dpi: int) -> None:
  """Lays out, writes and closes the figure (pyplot keeps every open figure alive otherwise)."""
  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  pyplot().close(fig)
