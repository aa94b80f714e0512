"""What a failed checkpoint read or write tells the user, and where orbax's own noise goes.

A save or restore that fails must end in one line naming the file and the error (errno for a
write), while orbax and tensorstore log tracebacks from their background threads, some of them
after orbax closed its event loop. The errors' texts are built here from the exception chain;
the noise goes to `<workdir>/restore.log` (OrbaxLogToFile, output_to, LateNoiseToLog).
train/checkpoint.py uses these; nothing here touches a checkpoint.
"""

from __future__ import annotations

import contextlib
import errno as errno_lib
import glob
import json
import logging
import os
import re
import sys
import traceback
from typing import Any, Iterator, Optional, TextIO


class UnreadableCheckpoints(ValueError):
  """Every checkpoint of a run is unreadable; starting over needs
  checkpoint.restart_if_unreadable."""


class CheckpointWriteError(ValueError):
  """A checkpoint could not be written (disk full, file too large, read-only file system); the
  message, one line, names the file and the errno. Nothing of it is left behind: the previous
  checkpoint is still the newest."""


def is_event_loop_noise(error: BaseException) -> bool:
  return isinstance(error, RuntimeError) and "Event loop is closed" in str(error)


def _raised_in_orbax(unraisable: Any) -> bool:
  """An unraisable exception of orbax's own coroutines: a restore that gave up on a damaged
  checkpoint leaves reads of its other arrays unawaited, and each, when collected, reports the
  read error it met ("Exception ignored in: <coroutine _read_array_index_and_device_put>")."""
  code = getattr(unraisable.object, "cr_code", None)
  if code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename:
    return True
  frames = traceback.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
  return any(f"{os.sep}orbax{os.sep}" in f.filename for f in frames)


class LateNoiseToLog:
  """sys.unraisablehook and sys.excepthook for the rest of the process once a checkpoint is
  written or a restore failed: tensorstore's threads finish reads and writes of a checkpoint
  orbax gave up on (a failed restore, a failed save) after orbax closed its event loop, and each
  reports 'RuntimeError: Event loop is closed' through one hook or the other (tensorstore calls
  PyErr_Print, which calls sys.excepthook). Those go to the log; anything else to the previous
  hooks."""

  def __init__(self, log_path: str):
    self.log_path = log_path
    self.previous_unraisable, self.previous_except = sys.unraisablehook, sys.excepthook

  @classmethod
  def install(cls, log_path: str) -> None:
    if not isinstance(sys.unraisablehook, LateNoiseToLog):
      hooks = cls(log_path)
      sys.unraisablehook, sys.excepthook = hooks, hooks.excepthook
      # asyncio reports a failed write's unawaited fragments when their tasks are collected,
      # after the checkpointer closed: kept on the asyncio logger for the rest of the process.
      logging.getLogger("asyncio").addFilter(OrbaxLogToFile(log_path))

  def _log(self, error: BaseException) -> None:
    with open(self.log_path, "a", encoding="utf-8") as f:
      f.write(f"(late, from orbax's threads) {error!r}\n")

  def __call__(self, unraisable: Any) -> None:
    if not (is_event_loop_noise(unraisable.exc_value) or _raised_in_orbax(unraisable)):
      self.previous_unraisable(unraisable)
      return
    self._log(unraisable.exc_value)

  def excepthook(self, kind: type, value: BaseException, tb: Any) -> None:
    if not is_event_loop_noise(value):
      self.previous_except(kind, value, tb)
      return
    self._log(value)


@contextlib.contextmanager
def output_to(path: str) -> Iterator[TextIO]:
  """Sends Python-level log records, stderr writes and unraisable exceptions (orbax and
  tensorstore's threads) to the file at `path` while the block runs."""
  with open(path, "a", encoding="utf-8") as f:
    handler = logging.StreamHandler(f)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_absl = logging.getLogger("absl").propagate
    saved_stderr, saved_hook = sys.stderr, sys.unraisablehook
    root.handlers, root.level = [handler], min(root.level, logging.INFO)
    logging.getLogger("absl").propagate = True
    sys.stderr = f

    def hook(unraisable):
      f.write(f"unraisable: {unraisable.exc_value!r}\n")
      traceback.print_exception(unraisable.exc_value, file=f)

    sys.unraisablehook = hook
    try:
      yield f
    finally:
      f.flush()
      root.handlers, root.level = saved_handlers, saved_level
      logging.getLogger("absl").propagate = saved_absl
      sys.stderr, sys.unraisablehook = saved_stderr, saved_hook
  if os.path.getsize(path) == 0:  # a restore that said nothing leaves no empty log behind
    os.remove(path)


def error_text(error: BaseException) -> str:
  """The messages of an error and of the errors it came from."""
  parts, seen = [], set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    parts.append(str(error))
    error = error.__cause__ or error.__context__
  return "\n".join(parts)


def unreadable_file(step_dir: str, error: BaseException) -> Optional[str]:
  """The file of checkpoint `step_dir` that `error` failed on, relative to step_dir, or None.

  tensorstore names the file it could not read in its message; a metadata file cut short fails
  as JSON without a name, so the first JSON file of the checkpoint that does not parse is it.
  """
  text = error_text(error)
  root = os.path.realpath(step_dir)
  named = [os.path.realpath(m) for m in re.findall(r'(/[^\s"\'<>]+)', text)]
  files = [p for p in named if p.startswith(root + os.sep) and os.path.isfile(p)]
  if files:
    return os.path.relpath(max(files, key=len), root)
  if isinstance(error, json.JSONDecodeError) or "JSON" in text:
    for path in sorted(glob.glob(os.path.join(root, "**"), recursive=True)):
      if not os.path.isfile(path) or os.path.getsize(path) > 1 << 20:
        continue
      with open(path, "rb") as f:
        head = f.read(1)
      if head not in (b"{", b"["):
        continue
      try:
        with open(path, encoding="utf-8") as f:
          json.load(f)
      except ValueError:
        return os.path.relpath(path, root)
  return None


def _from_orbax(record: logging.LogRecord) -> bool:
  """Whether a log record is orbax's or tensorstore's: logged from their code, or asyncio's
  "Task exception was never retrieved" about one of their tasks (a failed background write whose
  other fragments nobody awaits, reported when the task is collected, often at exit)."""
  if f"{os.sep}orbax{os.sep}" in record.pathname or "tensorstore" in record.pathname:
    return True
  if record.name != "asyncio":
    return False
  text = record.getMessage()
  if record.exc_info:
    text += "".join(traceback.format_exception(*record.exc_info))
  return "orbax" in text or "tensorstore" in text.lower()


class OrbaxLogToFile(logging.Filter):
  """A filter on absl's logger (orbax logs through absl) that sends orbax's and tensorstore's
  records to the file at `path` instead of the terminal: a failing background save logs its
  traceback from several threads, after save() returned. The file is opened only when there is
  something to write."""

  def __init__(self, path: str):
    super().__init__()
    self.path = path
    self.formatter = logging.Formatter("%(asctime)s %(levelname)s %(threadName)s: %(message)s")

  def filter(self, record: logging.LogRecord) -> bool:
    if not _from_orbax(record):
      return True
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(self.formatter.format(record) + "\n")
    return False


def errno_of(error: BaseException) -> Optional[int]:
  """The errno of a failed write: an OSError's, or the code tensorstore puts in its message
  ("[os_error_code='28']"); None when neither says."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno:
      return error.errno
    error = error.__cause__ or error.__context__
  return None


def write_error_text(error: BaseException, root: str) -> str:
  """'errno 28 ENOSPC (No space left on device) writing FILE' for a failed save, FILE the
  deepest path under `root` that the error names (root itself when it names none)."""
  text = error_text(error)
  code = errno_of(error)
  if code is None:
    found = re.search(r"os_error_code='?(\d+)|\[Errno (\d+)\]", text)
    code = int(found.group(1) or found.group(2)) if found else None
  named = [m.rstrip(":,.") for m in re.findall(r'(/[^\s"\'<>]+)', text)]
  under = [p for p in named if p.startswith(root)]
  where = max(under, key=len) if under else root
  if code is None:
    first = text.splitlines()[0] if text else type(error).__name__
    return f"{type(error).__name__} ({first[:160]}) writing {where}"
  name = errno_lib.errorcode.get(code, "?")
  return f"errno {code} {name} ({os.strerror(code)}) writing {where}"


def short(error: BaseException) -> str:
  """An error's type and the first line of its message, at most 200 characters."""
  line = (str(error).splitlines() or [""])[0]
  text = f"{type(error).__name__}: {line}" if line else type(error).__name__
  return text if len(text) <= 200 else text[:199] + "…"
