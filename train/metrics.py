"""Where metrics go: the loggers of train.loggers, each a sink of one record per logged step.

  jsonl        workdir/metrics.jsonl, one JSON object per logged step (what studies and reports read)
  tensorboard  workdir/tensorboard, scalars for TensorBoard (tensorboardX)
  wandb        a Weights & Biases run (the `wandb` extra, imported only when asked for): named
               after the workdir, its config the run's resolved settings, one log call per step.
               Without WANDB_MODE and without an API key (WANDB_API_KEY or a ~/.netrc entry for
               api.wandb.ai) it runs offline, into workdir/wandb, and never needs a network;
               `wandb sync workdir/wandb/offline-run-*` uploads it later. A resumed workdir
               continues the same W&B run (its id is kept in workdir/wandb_run_id).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from typing import Any, Mapping, Optional, Sequence

import jax

from train import files

DEFAULT_LOGGERS = ("tensorboard", "jsonl")  # train.loggers' default (train/config.py)


class JsonlSink:
  def __init__(self, workdir: str, config: Optional[Mapping[str, Any]] = None):
    del config
    path = os.path.join(workdir, "metrics.jsonl")
    _drop_torn_tail(path)
    self._f = open(path, "a", encoding="utf-8")

  def write(self, step: int, record: Mapping[str, Any]) -> None:
    self._f.write(json.dumps(record) + "\n")
    self._f.flush()

  def close(self) -> None:
    self._f.close()


class TensorboardSink:
  def __init__(self, workdir: str, config: Optional[Mapping[str, Any]] = None):
    del config
    from tensorboardX import SummaryWriter  # imported here: only process 0 needs it

    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, record: Mapping[str, Any]) -> None:
    for k, v in _scalars(record).items():
      self._tb.add_scalar(k, v, step)

  def close(self) -> None:
    self._tb.close()


def wandb_mode() -> Optional[str]:
  """None (wandb's own choice) when WANDB_MODE is set or an API key is found; else "offline"."""
  if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
    return None
  netrc = os.path.join(os.path.expanduser("~"), ".netrc")
  if os.path.exists(netrc):
    with open(netrc, encoding="utf-8", errors="replace") as f:
      if "api.wandb.ai" in f.read():
        return None
  return "offline"


class WandbSink:
  def __init__(self, workdir: str, config: Optional[Mapping[str, Any]] = None):
    import wandb  # the optional `wandb` extra

    id_path = os.path.join(workdir, "wandb_run_id")
    if os.path.exists(id_path):
      with open(id_path, encoding="utf-8") as f:
        run_id = f.read().strip()
    else:
      run_id = uuid.uuid4().hex[:12]
      files.write_atomic(id_path, run_id)
    self._run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "llmlab"),
        name=os.path.basename(os.path.normpath(workdir)), id=run_id, resume="allow",
        dir=workdir, config=dict(config or {}), mode=wandb_mode())

  def write(self, step: int, record: Mapping[str, Any]) -> None:
    self._run.log(_scalars(record), step=step)

  def close(self) -> None:
    self._run.finish()


SINKS = {"jsonl": JsonlSink, "tensorboard": TensorboardSink, "wandb": WandbSink}


class MetricsWriter:
  """Writes only on process 0; every other process gets a writer that does nothing.

  loggers: names of SINKS (checked by train/config.py); config: the run's resolved settings, for
  the loggers that record them (wandb)."""

  def __init__(self, workdir: str, loggers: Sequence[str] = DEFAULT_LOGGERS,
               config: Optional[Mapping[str, Any]] = None):
    self.enabled = jax.process_index() == 0
    self._sinks = []
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._sinks = [SINKS[name](workdir, config) for name in loggers]

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step)}
    record.update({k: _plain(v) for k, v in metrics.items()})
    for sink in self._sinks:
      sink.write(step, record)

  def close(self) -> None:
    for sink in self._sinks:
      sink.close()


def console_line(step: int, record: Mapping[str, Any]) -> str:
  """One step on the console, the same for pretraining and the alignment stages:
  'step 40  loss 2.345  eval_loss 2.401  12,345 tokens/s  MFU 3.21%  lr 0.003'. The held-out
  numbers (eval_*, eval/*, test_*, test/*, and each task's task/NAME/accuracy; the router's
  per-expert ones and the tasks' other numbers left to metrics.jsonl) appear on the steps that
  evaluated them, throughput where it was measured."""
  parts = [f"step {step}"]
  if isinstance(record.get("loss"), (int, float)):
    parts.append(f"loss {record['loss']:.4f}")
  for k, v in record.items():
    held_out = k.startswith(("eval", "test")) and "moe" not in k
    task = k.startswith("task/") and k.endswith("/accuracy")
    if (held_out or task) and isinstance(v, (int, float)):
      parts.append(f"{k} {v:.4g}")
  if "tokens_per_sec" in record:
    parts.append(f"{record['tokens_per_sec']:,.0f} tokens/s")
  if "mfu" in record:
    parts.append(f"MFU {100 * record['mfu']:.3g}%")
  if "lr" in record:
    parts.append(f"lr {record['lr']:.3g}")
  return "  ".join(parts)


def _scalars(record: Mapping[str, Any]) -> dict[str, float]:
  """The record's finite numbers, step apart."""
  return {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))
          and not isinstance(v, bool) and math.isfinite(v)}
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


def by_step(workdir: str) -> list[dict]:
  """The workdir's metrics.jsonl records merged per step, in step order: a resumed run may repeat
  a step (the later record wins), and an alignment stage logs its test accuracy as a second
  record of its last step."""
  merged: dict[int, dict] = {}
  for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")):
    merged.setdefault(r["step"], {}).update(r)
  return [merged[s] for s in sorted(merged)]


def read_jsonl(path: str) -> list[dict]:
  """The records of a metrics.jsonl, in order.

  A last line that is not JSON is skipped: a run killed mid-write (kill -9, preemption) leaves
  one torn line at the end, and the run it belongs to resumes from a checkpoint anyway. A bad
  line anywhere else is corruption: DataError (a ValueError) naming path:line.
  """
  return [record for _, record in
          files.iter_jsonl(path, bad_line="not a JSON record ({msg})", torn_tail_ok=True)]
