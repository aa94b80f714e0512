"""The fault suite (issue 28): each way a run gets hurt, done for real to the command line.

Every case runs `python -m experiments.train` (or experiments.convert / prepare_data) on the tiny
config as a subprocess, in its own folder under one temporary root, and hurts it the way the world
does: kill -9 at a random step or in the middle of a checkpoint save, SIGTERM then a rerun, the
newest checkpoint damaged, the disk full (RLIMIT_FSIZE) during a save, at start or while the data
is prepared, a second run on the same workdir, a shard byte flipped or a token id out of range, a
source file changed after its shards were made, an export into a workdir, and bad inputs (a
read-only workdir, an empty or file --workdir, a missing config file with overrides, a truncated or
empty safetensors file, an infinite mixture weight, a corpus path with `[` in its name).

Each case records: passed, what it expected, the last line of stderr, whether a Python traceback
reached the user, and what was lost: checkpoint steps before and after, the step a rerun started
from, files left behind (`*.tmp`, half-written folders), and the largest difference between the
rerun's losses and those of an uninterrupted reference run (metrics.jsonl), 0 on CPU when a resume
is exact. experiments/faults.py is the command line; results/faults/results.json the record.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
import time
from typing import Callable, Optional

from train import files as files_lib
from train import provenance as provenance_lib

REPO_ROOT = provenance_lib.REPO_ROOT
TINY = "experiments/configs/tiny.py"
EXACT = 1e-6  # largest loss difference a resume may show against the reference (CPU: 0)
TRACEBACK = "Traceback (most recent call last)"


@dataclasses.dataclass
class Outcome:
  """A finished subprocess: exit status (None: killed by the suite after its timeout)."""

  rc: Optional[int]
  stdout: str
  stderr: str
  seconds: float

  @property
  def last_line(self) -> str:
    """The last non-blank line of stderr; a progress bar's carriage returns split lines too."""
    lines = [x.strip() for x in self.stderr.replace("\r", "\n").splitlines() if x.strip()]
    return lines[-1] if lines else ""

  @property
  def traceback(self) -> bool:
    return TRACEBACK in self.stderr

  @property
  def summary(self) -> dict:
    """The JSON summary a training run prints last on stdout ({} when it printed none)."""
    for line in reversed(self.stdout.splitlines()):
      if line.startswith("{"):
        try:
          return json.loads(line)
        except ValueError:
          return {}
    return {}

  def one_line_error(self) -> bool:
    """A refusal as the project promises it: exit status 2, `error: ...` last, no traceback."""
    return self.rc == 2 and self.last_line.startswith("error: ") and not self.traceback


def drop_file_permission_override() -> None:
  """preexec_fn for a subprocess of root: removes CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from
  its capability bounding set, so after exec a folder's mode bits bind it (chmod 555 means
  read-only) as they bind any user. A no-op for any other user."""
  if os.geteuid() != 0:
    return
  import ctypes

  libc = ctypes.CDLL(None, use_errno=True)
  pr_capbset_drop, cap_dac_override, cap_dac_read_search = 24, 1, 2
  for cap in (cap_dac_override, cap_dac_read_search):
    libc.prctl(pr_capbset_drop, cap, 0, 0, 0)


def file_size_limit(limit: int) -> Callable[[], None]:
  """preexec_fn: RLIMIT_FSIZE = limit bytes, a disk that fills at that file size (Python ignores
  SIGXFSZ, so a write past it fails with EFBIG)."""
  import resource

  return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@dataclasses.dataclass
class Suite:
  """Where the cases run and how: the temporary root, the corpus, the run's length."""

  root: str
  python: str = sys.executable
  steps: int = 8
  every_steps: int = 2
  timeout_s: float = 300.0
  rng: random.Random = dataclasses.field(default_factory=lambda: random.Random(0))
  corpus: str = ""
  reference: dict = dataclasses.field(default_factory=dict)  # step -> loss, uninterrupted run
  reference_workdir: str = ""
  hf_dir: str = ""  # the reference run exported by convert --to_hf (the export case)

  def __post_init__(self):
    # One persistent compilation cache for every case: the runs compile the same tiny steps, and
    # compiling is most of a case's time. A resumed run and the reference then also share one
    # executable, so their losses compare exactly.
    self.env = {**os.environ, "JAX_PLATFORMS": "cpu",
                "JAX_COMPILATION_CACHE_DIR": os.path.join(self.root, "xla_cache"),
                "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    self.env.pop("XLA_FLAGS", None)  # a parent's fake device count would change the mesh

  def path(self, *parts: str) -> str:
    return os.path.join(self.root, *parts)

  def train_args(self, workdir: str, *extra: str, corpus: str = "") -> list[str]:
    return ["-m", "experiments.train", f"--config={TINY}",
            f"--config.data.paths={corpus or self.corpus}", f"--workdir={workdir}",
            f"--config.train.steps={self.steps}",
            f"--config.checkpoint.every_steps={self.every_steps}", "--config.checkpoint.keep=50",
            *extra]

  def run(self, args: list[str], preexec: Optional[Callable[[], None]] = None) -> Outcome:
    """Runs `python ARGS` from the repository root to its end (or the suite's timeout)."""
    t0 = time.perf_counter()
    try:
      p = subprocess.run([self.python, *args], cwd=REPO_ROOT, env=self.env, capture_output=True,
                         text=True, timeout=self.timeout_s, preexec_fn=preexec)
      return Outcome(p.returncode, p.stdout, p.stderr, time.perf_counter() - t0)
    except subprocess.TimeoutExpired as e:
      out = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
      return Outcome(None, out(e.stdout), out(e.stderr), time.perf_counter() - t0)

  def start(self, args: list[str], name: str) -> "Running":
    """Starts `python ARGS` in the background, its output to files beside the case."""
    out, err = self.path(f"{name}.stdout"), self.path(f"{name}.stderr")
    with open(out, "wb") as fo, open(err, "wb") as fe:
      proc = subprocess.Popen([self.python, *args], cwd=REPO_ROOT, env=self.env, stdout=fo,
                              stderr=fe)
    return Running(proc, out, err, time.perf_counter())


@dataclasses.dataclass
class Running:
  """A training run started in the background."""

  proc: subprocess.Popen
  stdout_path: str
  stderr_path: str
  t0: float

  def wait_until(self, ready: Callable[[], bool], timeout_s: float, poll_s: float = 0.05) -> bool:
    """Polls ready() until it is true (True), the process ends or the time runs out (False)."""
    end = time.perf_counter() + timeout_s
    while time.perf_counter() < end:
      if ready():
        return True
      if self.proc.poll() is not None:
        return ready()
      time.sleep(poll_s)
    return False

  def finish(self, timeout_s: float, sig: Optional[int] = None) -> Outcome:
    """Sends sig (if any), waits for the end (kill -9 after timeout_s) and reads the output."""
    if sig is not None and self.proc.poll() is None:
      self.proc.send_signal(sig)
    try:
      rc: Optional[int] = self.proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()
      rc = None
    read = lambda p: open(p, encoding="utf-8", errors="replace").read()
    return Outcome(rc, read(self.stdout_path), read(self.stderr_path),
                   time.perf_counter() - self.t0)


# --- What a workdir holds ---------------------------------------------------------------------

def logged_losses(workdir: str) -> dict[int, float]:
  """step -> loss from metrics.jsonl, the last record of a step winning (a rerun logs the steps
  after its checkpoint again); a torn last line (kill -9 mid-write) is skipped."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return {}
  return {int(r["step"]): float(r["loss"])
          for _, r in files_lib.iter_jsonl(path, torn_tail_ok=True) if "loss" in r}


def checkpoint_steps(workdir: str) -> list[int]:
  """The steps of the finished checkpoints (folders named by a step number)."""
  root = os.path.join(workdir, "checkpoints")
  names = os.listdir(root) if os.path.isdir(root) else []
  return sorted(int(n) for n in names if n.isdigit())


def in_progress_saves(workdir: str) -> list[str]:
  """Checkpoint folders not (yet) finished: orbax writes `<step>.orbax-checkpoint-tmp-*`."""
  root = os.path.join(workdir, "checkpoints")
  names = os.listdir(root) if os.path.isdir(root) else []
  return sorted(n for n in names if "tmp" in n)


def leftovers(directory: str) -> list[str]:
  """Temporary files and folders under directory: `*.tmp`, `NAME.tmp-PID`, orbax's tmp folders
  (relative paths)."""
  out = []
  for dirpath, dirnames, filenames in os.walk(directory):
    for name in dirnames + filenames:
      if name.endswith(".tmp") or ".tmp-" in name or "orbax-checkpoint-tmp" in name:
        out.append(os.path.relpath(os.path.join(dirpath, name), directory))
  return sorted(out)


def loss_gap(suite: Suite, workdir: str) -> float:
  """Largest |loss - reference loss| over the reference's steps; inf when a step is missing."""
  got = logged_losses(workdir)
  if any(step not in got for step in suite.reference):
    return float("inf")
  return max((abs(got[s] - loss) for s, loss in suite.reference.items()), default=float("inf"))


def tree_digest(directory: str) -> dict[str, int]:
  """relative path -> size of every file under directory, for 'was anything changed'."""
  out = {}
  for dirpath, _, filenames in os.walk(directory):
    for name in filenames:
      p = os.path.join(dirpath, name)
      out[os.path.relpath(p, directory)] = os.path.getsize(p)
  return out


def write_corpus(path: str, n_docs: int = 400, seed: int = 0) -> None:
  """A .jsonl corpus of n_docs short documents of seeded random words."""
  rng = random.Random(seed)
  words = ("the quick brown fox jumps over a lazy dog while seven models train on data in "
           "shards and checkpoints").split()
  files_lib.write_jsonl_atomic(path, (
      {"text": " ".join(rng.choice(words) for _ in range(rng.randint(10, 40)))}
      for _ in range(n_docs)))
