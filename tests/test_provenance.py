"""Results know where they came from: the commit, whether the tree was dirty, the command."""

import subprocess
import sys

from train import provenance


def _git(cwd, *args):
  subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_commit_and_dirty_flag_follow_the_repository(tmp_path, monkeypatch):
  # Catches a dirty flag that is inverted or reads untracked files (a results folder written by
  # the run itself must not make the tree "dirty"), and a commit read from the wrong directory.
  _git(tmp_path, "init", "-q")
  (tmp_path / "a.py").write_text("x = 1\n")
  _git(tmp_path, "add", "a.py")
  _git(tmp_path, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "one")
  head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True,
                        text=True).stdout.strip()
  monkeypatch.setattr(provenance, "REPO_ROOT", str(tmp_path))
  (tmp_path / "results.json").write_text("{}")  # untracked: not dirty
  clean = provenance.provenance({"train": {"lr": 0.1}}, argv=["x", "--flag=1"])
  assert clean["commit"] == head and clean["dirty"] is False
  assert clean["config"] == {"train": {"lr": 0.1}}
  assert clean["command"].endswith("--flag=1")
  # A tracked results file the run rewrites as it goes is its output, not a code change.
  (tmp_path / "results").mkdir()
  (tmp_path / "results" / "r.json").write_text("{}")
  _git(tmp_path, "add", "results/r.json")
  _git(tmp_path, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "two")
  (tmp_path / "results" / "r.json").write_text('{"partial": 1}')
  assert provenance.provenance()["dirty"] is False
  (tmp_path / "a.py").write_text("x = 2\n")
  assert provenance.provenance()["dirty"] is True


def test_outside_a_checkout_the_commit_is_none(tmp_path, monkeypatch):
  monkeypatch.setattr(provenance, "REPO_ROOT", str(tmp_path))
  record = provenance.provenance()
  assert record["commit"] is None and record["dirty"] is None
  assert record["host"]["cpu_count"] >= 1 and record["date"]


def test_command_names_the_script_module(monkeypatch):
  monkeypatch.setattr(sys, "argv", [f"{provenance.REPO_ROOT}/experiments/scaling.py", "--a=1"])
  assert provenance.provenance()["command"].endswith("-m experiments.scaling --a=1")


def test_a_resumed_file_keeps_its_oldest_provenance_and_a_fresh_one_gets_this_invocations():
  """Catches: a script that kept an earlier invocation's records stamping the file with today's
  commit (it would look current while part of it came from older code), and a fresh file left
  without provenance."""
  old = {"commit": "0" * 40, "date": "2026-01-01T00:00:00+00:00"}
  kept = provenance.stamp({"provenance": dict(old), "runs": [1]}, resumed=True)
  assert kept["provenance"] == old
  fresh = provenance.stamp({"provenance": dict(old), "runs": [1]}, resumed=False)
  assert fresh["provenance"]["commit"] != old["commit"] and fresh["provenance"]["command"]
  assert "provenance" in provenance.stamp({}, resumed=True)  # nothing to keep: stamped


def test_every_module_that_writes_a_results_json_records_provenance():
  """Catches a new script or study writing results.json without the provenance block that
  experiments.results_status reads (its numbers could never be traced to their code)."""
  import glob
  import os
  import re

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  names_it = re.compile(r"""["']results\.json(\.tmp)?["']""")  # the literal, not results.jsonl
  writes = re.compile(r"json\.dump\(|write_json|write_atomic")
  missing = []
  for path in glob.glob(os.path.join(root, "experiments", "*.py")) + glob.glob(
      os.path.join(root, "train", "**", "*.py"), recursive=True) + [
          os.path.join(root, "tests", "mutants.py")]:
    with open(path, encoding="utf-8") as f:
      text = f.read()
    if names_it.search(text) and writes.search(text) and "provenance" not in text:
      missing.append(os.path.relpath(path, root))
  assert not missing, missing
