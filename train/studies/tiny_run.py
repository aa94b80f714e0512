"""The tiny path's wall time: experiments/configs/tiny.py run as a user runs it, end to end.

Three subprocesses of the repository's own commands, under one scratch root:
  prepare: experiments.prepare_data on the tiny config: its tokenizer and shards, timed by
           prepare_config itself (seconds, tokens of each split, so the validation share).
  cold:    experiments.train in a fresh workdir with an empty shard folder (data.prepared) and an
           empty compilation cache (--compilation_cache): the first tiny run (imports,
           tokenizer, shards, compiles, 6 steps, checkpoints, plot).
  warm:    experiments.train in a new workdir on the shards and the compiled programs `cold`
           left in those folders: a later tiny run, whose data is prepared and whose programs
           load from the cache.
Every run's wall seconds from start to exit, and the seconds at which its banner and its first and
last step lines were printed (what comes before the banner: imports, data, state; between banner
and step 1: the first compile). Also the wall seconds of `--help` of the daily scripts
(HELP_SCRIPTS), which load no config file and import no jax. Load averages before and after,
since the machine may be shared.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from typing import Optional, Sequence

TINY = "experiments/configs/tiny.py"
HELP_SCRIPTS = ("train", "sft", "evaluate", "generate")
_STEP = re.compile(r"^step (\d+)\s")


def timed_lines(cmd: Sequence[str], cwd: str, timeout_s: float = 600.0) -> tuple[float, int, list]:
  """Runs cmd with stdout and stderr merged; returns (wall seconds, exit status, [(seconds since
  start, line)]) with lines split at newlines and carriage returns (progress bars)."""
  # No persistent XLA cache a caller's environment may name (it would win over --compilation_cache).
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  start = time.perf_counter()
  proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
  lines, buf = [], b""
  deadline = start + timeout_s
  while True:
    byte = proc.stdout.read(1)
    if not byte:
      break
    if byte in (b"\n", b"\r"):
      if buf.strip():
        lines.append((time.perf_counter() - start, buf.decode(errors="replace")))
      buf = b""
    else:
      buf += byte
    if time.perf_counter() > deadline:
      proc.kill()
      break
  status = proc.wait()
  return time.perf_counter() - start, status, lines


def phases(lines: Sequence[tuple[float, str]]) -> dict:
  """Seconds at which the banner ('llmlab pretraining'), step 1's line and the last step's line
  were printed (None where absent)."""
  banner = next((t for t, s in lines if s.startswith("llmlab pretraining")), None)
  steps = [(t, int(m.group(1))) for t, s in lines for m in [_STEP.match(s)] if m]
  first = next((t for t, n in steps if n == 1), None)
  return {"banner_s": _round(banner), "first_step_s": _round(first),
          "last_step_s": _round(steps[-1][0] if steps else None)}


def _round(x: Optional[float]) -> Optional[float]:
  return None if x is None else round(x, 2)


def train_run(root: str, name: str, prepared: str, python: str, repo: str) -> dict:
  """One experiments.train run of the tiny config in root/name, its shards in `prepared`."""
  cmd = [python, "-m", "experiments.train", f"--config={TINY}", f"--workdir={root}/{name}",
         f"--config.data.prepared={prepared}", f"--compilation_cache={root}/xla"]
  load = os.getloadavg()[0]
  wall, status, lines = timed_lines(cmd, repo)
  if status:
    tail = "\n".join(s for _, s in lines[-5:])
    raise RuntimeError(f"{' '.join(cmd)} exited with {status}:\n{tail}")
  return {"command": " ".join(cmd[1:]), "wall_s": round(wall, 2), **phases(lines),
          "load_1min_before": round(load, 2)}


def prepare_run(root: str, python: str, repo: str) -> dict:
  """experiments.prepare_data of the tiny config in root/prepare: its own timing and token counts
  (its last line is prepare_config's summary as JSON)."""
  cmd = [python, "-m", "experiments.prepare_data", f"--config={TINY}", f"--workdir={root}/prepare"]
  wall, status, lines = timed_lines(cmd, repo)
  if status:
    raise RuntimeError(f"{' '.join(cmd)} exited with {status}: {lines[-1][1] if lines else ''}")
  summary = json.loads(lines[-1][1])
  train_tokens, val_tokens = summary["train_tokens"][0], summary["val_tokens"][0]
  return {"command": " ".join(cmd[1:]), "wall_s": round(wall, 2),
          "prepare_s": summary["seconds"], "train_tokens": train_tokens, "val_tokens": val_tokens,
          "val_share": round(val_tokens / (train_tokens + val_tokens), 4),
          "folder": os.path.basename(summary["folders"][0])}


def help_times(python: str, repo: str, scripts: Sequence[str] = HELP_SCRIPTS) -> dict:
  """{script: wall seconds of `python -m experiments.SCRIPT --help`} (absl exits 1 after help)."""
  out = {}
  for script in scripts:
    wall, _, lines = timed_lines([python, "-m", f"experiments.{script}", "--help"], repo)
    if not any("--workdir" in line for _, line in lines):
      raise RuntimeError(f"experiments.{script} --help lists no --workdir")
    out[script] = round(wall, 2)
  return out


def measure(root: str, python: str = sys.executable, repo: Optional[str] = None) -> dict:
  """prepare, cold and warm (module docstring) under root, which must not exist yet (so every
  cache in it is cold); repo: the repository root the commands run from."""
  if os.path.exists(root):
    raise FileExistsError(f"{root} exists; the cold run needs a fresh folder")
  os.makedirs(root)
  repo = repo or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  load_before = [round(x, 2) for x in os.getloadavg()]
  result = {"prepare": prepare_run(root, python, repo)}
  shards = os.path.join(root, "shards")
  result["cold"] = train_run(root, "cold", shards, python, repo)
  result["warm"] = train_run(root, "warm", shards, python, repo)
  result["help_s"] = help_times(python, repo)
  result["load_average_before"] = load_before
  result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
  return result
