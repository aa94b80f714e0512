"""One run per workdir: an exclusive lock on <workdir>/.lock for as long as a run writes there.

Pretraining (train/pretrain.py train) and the alignment stages (train/align/stage.py Run) hold
it; readers (generation, evaluation, export) do not. The kernel's flock on the open file is the
lock itself, so it dies with its process however the process ends (kill -9 included); the
file's contents only say who holds it (host, pid, start time, command), for the one-line
refusal a second run gets. A run that ends normally removes the file; a file left behind by a
process that has ended is taken over with a one-line note. A multi-host run takes it on
process 0 only (one lock per run, not per process).

Where flock is not supported (some network filesystems answer ENOLCK or EOPNOTSUPP), the
contents decide: a holder on this host whose pid is alive, or any holder on another host, keeps
the workdir. A lock left by another host is never taken over (its pid cannot be checked from
here): the refusal says to delete the file once that run has ended.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from typing import Optional

LOCK_FILE = ".lock"
# flock errors that mean "this filesystem has no locks", not "someone holds it".
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class WorkdirBusy(ValueError):
  """Another live process holds the workdir (one line, naming it); or the workdir cannot be
  locked at all (not a directory, not writable)."""


# The locks this process holds, by the lock file's real path: a second acquire of the same
# workdir in this process (a run that failed between taking the lock and releasing it, retried
# in a notebook or a test) adopts the held lock instead of refusing itself.
_HELD: dict[str, "WorkdirLock"] = {}
_HELD_GUARD = threading.Lock()


def _cannot(verb: str, workdir: str, error: OSError) -> str:
  """`cannot lock --workdir=W: Permission denied [errno 13 EACCES]; ...`: the errno by name, and
  what to change."""
  name = errno.errorcode.get(error.errno, "") if isinstance(error.errno, int) else ""
  code = f" [errno {error.errno} {name}]" if name else ""
  if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
    hint = "; make it writable for this user or choose another --workdir"
  elif error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
    hint = "; free space there or choose another --workdir"
  else:
    hint = "; choose another --workdir"
  return f"cannot {verb} --workdir={workdir}: {error.strerror or error}{code}{hint}"


def _holder_text(holder: dict, workdir: str) -> str:
  if not holder:
    return f"workdir {workdir} is in use by another process (starting)"
  return (f"workdir {workdir} is in use by pid {holder.get('pid', '?')} on host "
          f"{holder.get('host', '?')} since {holder.get('since', '?')}")


def _read_holder(fd: int) -> dict:
  """The lock file's record ({} when empty or unreadable: a holder still writing it)."""
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 1 << 16).decode("utf-8", "replace")
    holder = json.loads(text) if text.strip() else {}
    return holder if isinstance(holder, dict) else {}
  except (OSError, ValueError):
    return {}


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, another user's
    return True
  return True


def _flock(fd: int) -> Optional[bool]:
  """True: locked; False: someone else holds it; None: the filesystem has no flock."""
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return True
  except BlockingIOError:
    return False
  except OSError as e:
    if e.errno in _NO_LOCKS:
      return None
    raise


class WorkdirLock:
  """The lock of one workdir, held from acquire() to release() (a context manager too)."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self.fd: Optional[int] = None
    # The folders acquire() created, deepest first: removed again at release while empty, so a
    # run refused before it wrote anything leaves no trace.
    self.created: list[str] = []

  def __enter__(self) -> "WorkdirLock":
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def acquire(self) -> "WorkdirLock":
    """Takes the lock or raises WorkdirBusy naming the holder. Creates the workdir."""
    self._make_workdir()
    key = os.path.realpath(self.path)
    with _HELD_GUARD:
      held = _HELD.get(key)
      if held is not None and held.fd is not None:  # adopt this process's own lock
        self.fd, held.fd = held.fd, None
        self.created = held.created
        _HELD[key] = self
        return self
      self._take()
      _HELD[key] = self
    return self

  def _make_workdir(self) -> None:
    missing, d = [], os.path.abspath(self.workdir)
    while d and not os.path.exists(d) and d != os.path.dirname(d):
      missing.append(d)
      d = os.path.dirname(d)
    try:
      os.makedirs(self.workdir, exist_ok=True)
    except OSError as e:
      raise WorkdirBusy(_cannot("use", self.workdir, e)) from None
    self.created = self.created or missing

  def _take(self) -> None:
    for _ in range(8):  # retried while a releasing holder unlinks the file (or folder) we opened
      self._make_workdir()
      try:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      except FileNotFoundError:  # the folder was just removed by a releasing holder
        continue
      except OSError as e:
        raise WorkdirBusy(_cannot("lock", self.workdir, e)) from None
      locked = _flock(fd)
      holder = _read_holder(fd)
      if locked is False or (locked is None and self._kept_by(holder)):
        os.close(fd)
        raise WorkdirBusy(self._refusal(holder))
      try:
        same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same_file = False
      if not same_file:
        os.close(fd)
        continue
      if holder:
        print(f"note: taking over the lock of {self.workdir} left by pid "
              f"{holder.get('pid', '?')} on host {holder.get('host', '?')} (since "
              f"{holder.get('since', '?')}), which has ended", file=sys.stderr, flush=True)
      self._write_record(fd)
      self.fd = fd
      return
    raise WorkdirBusy(f"workdir {self.workdir}: its lock file keeps changing; is another run "
                      "starting there?")

  def _kept_by(self, holder: dict) -> bool:
    """Without flock: does the recorded holder still keep the workdir?"""
    if not holder:
      return False
    if holder.get("host") != socket.gethostname():
      return True
    return int(holder.get("pid", -1)) != os.getpid() and _pid_alive(int(holder.get("pid", -1)))

  def _refusal(self, holder: dict) -> str:
    text = _holder_text(holder, self.workdir)
    if holder and holder.get("host") != socket.gethostname():
      return (f"{text}; wait for it or use another --workdir (if that run has ended, delete "
              f"{self.path})")
    return f"{text}; wait for it or use another --workdir"

  def _write_record(self, fd: int) -> None:
    record = {"host": socket.gethostname(), "pid": os.getpid(),
              "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(record) + "\n").encode())

  def release(self) -> None:
    """Removes the lock file and unlocks; a no-op when not held (or adopted by a later acquire)."""
    with _HELD_GUARD:
      if self.fd is None:
        return
      try:
        os.unlink(self.path)  # before unlocking: a waiter that opened it retries (_take)
      except OSError:
        pass
      os.close(self.fd)  # closing the descriptor drops the flock
      self.fd = None
      for d in self.created:
        try:
          os.rmdir(d)  # only while empty: the run wrote nothing there
        except OSError:
          break
      key = os.path.realpath(self.path)
      if _HELD.get(key) is self:
        del _HELD[key]


def hold(workdir: str, enabled: bool = True) -> WorkdirLock:
  """The workdir's lock, acquired (use as `with hold(workdir):`). enabled=False (every process
  but 0 of a multi-host run) returns a lock that holds nothing."""
  lock = WorkdirLock(workdir)
  return lock.acquire() if enabled else lock
