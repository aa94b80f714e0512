"""Figures of the experiments and the alignment stages: one matplotlib set-up, one way to save."""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
  """matplotlib.pyplot on the Agg backend: runs write PNGs on machines without a display
  (clusters, CI). Imported on call, so a module that plots only at the end never pays for
  matplotlib at import."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def save(fig: Any, path: str, dpi: int) -> None:
  """Lays out, writes and closes the figure (pyplot keeps every open figure alive otherwise)."""
  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  pyplot().close(fig)
