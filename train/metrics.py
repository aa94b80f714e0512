"""Where metrics go: workdir/metrics.jsonl (one JSON object per logged step) and TensorBoard."""

from __future__ import annotations

import json
import math
import os
from typing import Mapping

import jax


class MetricsWriter:
  """Writes only on process 0; every other process gets a writer that does nothing."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
      from tensorboardX import SummaryWriter  # imported here: only process 0 needs it

      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step)}
    record.update({k: _plain(v) for k, v in metrics.items()})
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for k, v in record.items():
      if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
        self._tb.add_scalar(k, v, step)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def _plain(v):
  if hasattr(v, "item"):
    v = v.item()
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)  # JSON has no NaN; keep it readable
  return v


def read_jsonl(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
