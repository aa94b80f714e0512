"""Where metrics go: workdir/metrics.jsonl (one JSON object per logged step) and TensorBoard."""

from __future__ import annotations

import json
import math
import os
from typing import Mapping

import jax

from train import files


class MetricsWriter:
  """Writes only on process 0; every other process gets a writer that does nothing."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, "metrics.jsonl")
      _drop_torn_tail(path)
      self._jsonl = open(path, "a", encoding="utf-8")
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


def _drop_torn_tail(path: str) -> None:
  """Cuts a last line without its newline (a write cut short by kill -9): appending after it
  would glue the next record onto it and make a corrupt line in the middle of the file."""
  if not os.path.exists(path) or os.path.getsize(path) == 0:
    return
  with open(path, "rb+") as f:
    f.seek(-1, os.SEEK_END)
    if f.read(1) == b"\n":
      return
    f.seek(0)
    data = f.read()
    f.truncate(data.rfind(b"\n") + 1)  # 0 when the torn line is the only one


def read_jsonl(path: str) -> list[dict]:
  """The records of a metrics.jsonl, in order.

  A last line that is not JSON is skipped: a run killed mid-write (kill -9, preemption) leaves
  one torn line at the end, and the run it belongs to resumes from a checkpoint anyway. A bad
  line anywhere else is corruption: DataError (a ValueError) naming path:line.
  """
  return [record for _, record in
          files.iter_jsonl(path, bad_line="not a JSON record ({msg})", torn_tail_ok=True)]
