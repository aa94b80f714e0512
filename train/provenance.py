"""Where a result came from: the commit, the command, the config, the date, the host.

Every results.json carries `provenance(config)` under the key "provenance", so a stale number can
be traced to the code and command that made it (git rev-parse HEAD, and whether the tree had
uncommitted changes then).
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from typing import Any, Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args: str) -> Optional[str]:
  try:
    out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.TimeoutExpired):
    return None
  return out.stdout.strip() if out.returncode == 0 else None


def provenance(config: Any = None, argv: Optional[list[str]] = None) -> dict:
  """{commit, dirty, command, config, date, host, jax}. config: a ConfigDict, a dict or None.
  The commit is None outside a git checkout (an installed copy), never a guess."""
  # results/ holds outputs, not code: a script that writes its results.json as it goes (or a
  # study's results.jsonl before its summary) would otherwise mark its own run dirty.
  status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
  try:
    import jax

    jax_version, devices = jax.__version__, sorted({d.device_kind for d in jax.devices()})
  except Exception:  # noqa: BLE001 - a record without jax is still a record
    jax_version, devices = None, []
  if config is not None and hasattr(config, "to_dict"):
    config = config.to_dict()
  return {
      "commit": _git("rev-parse", "HEAD"),
      "dirty": None if status is None else bool(status),
      "command": " ".join([os.path.basename(sys.executable), "-m", _module_of(sys.argv)]
                          + list((argv if argv is not None else sys.argv)[1:])),
      "config": config,
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "host": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "devices": devices},
      "jax": jax_version,
  }


def stamp(results: dict, config: Any = None, *, resumed: bool = False) -> dict:
  """Sets results["provenance"] to this invocation's and returns results. A file the script
  resumed (records of an earlier invocation kept in it) keeps the provenance it had: the oldest
  code behind any of its numbers, so it never looks newer than it is (rerun with the script's
  --force to remeasure all of it)."""
  if not (resumed and "provenance" in results):
    results["provenance"] = provenance(config)
  return results


def _module_of(argv: list[str]) -> str:
  """experiments.NAME for a script run as python -m experiments.NAME (argv[0] is its file)."""
  path = os.path.abspath(argv[0]) if argv and argv[0] else ""
  rel = os.path.relpath(path, REPO_ROOT)
  if rel.endswith(".py") and not rel.startswith(".."):
    return rel[:-3].replace(os.sep, ".")
  return os.path.basename(path) or "?"
