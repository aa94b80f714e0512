"""Results know whether the code that made them changed since: train/results_status.py."""

from __future__ import annotations

import json
import os
import subprocess

from tests.helpers import ROOT
from train import results_status


def _git(cwd, *args) -> str:
  return subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=cwd,
                        check=True, capture_output=True, text=True).stdout.strip()


def _commit(repo, message: str) -> str:
  _git(repo, "add", "-A")
  _git(repo, "commit", "-qm", message)
  return _git(repo, "rev-parse", "HEAD")


def _write(repo, rel: str, text: str) -> None:
  path = repo / rel
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)


def _repo(tmp_path):
  """A script that reaches pkg/core.py through pkg/mid.py (a relative import inside a function),
  beside an unrelated module and a text file; one result made at the first commit."""
  repo = tmp_path / "repo"
  repo.mkdir()
  _git(repo, "init", "-q")
  _write(repo, "pkg/__init__.py", "")
  _write(repo, "pkg/core.py", '"""Core."""\n\nSCALE = 2\n')
  _write(repo, "pkg/mid.py", "def f():\n  from .core import SCALE\n  return SCALE\n")
  _write(repo, "pkg/other.py", "OTHER = 1\n")
  _write(repo, "exp/run.py", "from pkg import mid\n\nif __name__ == '__main__':\n  mid.f()\n")
  _write(repo, "notes.txt", "first\n")
  commit = _commit(repo, "one")
  _write(repo, "results/r/results.json", json.dumps(
      {"provenance": {"commit": commit, "dirty": False, "command": "python -m exp.run --a=1",
                      "date": "2026-12-07T00:00:00+00:00"}, "loss": 1.5}))
  _commit(repo, "result")
  return repo


def _status(repo) -> results_status.Entry:
  (entry,) = results_status.collect(str(repo))
  return entry


def test_the_script_and_its_transitive_imports_are_the_dependencies(tmp_path):
  # Catches: a relative or function-level import not followed (pkg/core.py missing), or every
  # module of the repository counted (pkg/other.py present).
  repo = _repo(tmp_path)
  deps = results_status.dependencies(str(repo), ["exp/run.py"])
  assert deps == ["exp/run.py", "pkg/__init__.py", "pkg/core.py", "pkg/mid.py"]


def test_a_change_to_an_imported_module_makes_the_result_stale_an_unrelated_one_does_not(tmp_path):
  # The bug this guards: staleness read from every file that changed (the unrelated commit would
  # mark it stale) or from the script alone (the imported module's change would not).
  repo = _repo(tmp_path)
  assert _status(repo).status == "current"
  _write(repo, "notes.txt", "second\n")
  _write(repo, "pkg/other.py", "OTHER = 2\n")
  _write(repo, "pkg/core.py", '"""Core, the constant the script reads."""\n\nSCALE = 2  # why\n')
  _commit(repo, "unrelated, and a docstring-only edit of the imported module")
  entry = _status(repo)
  assert (entry.status, entry.changed, entry.stale) == ("current", [], False)
  _write(repo, "pkg/core.py", '"""Core."""\n\nSCALE = 3\n')  # uncommitted: still stale
  entry = _status(repo)
  assert (entry.status, entry.changed, entry.stale) == ("stale", ["pkg/core.py"], True)
  _commit(repo, "the imported module changes")
  assert _status(repo).changed == ["pkg/core.py"]


def test_reconstructed_unknown_and_missing_provenance(tmp_path):
  repo = _repo(tmp_path)
  first = _git(repo, "rev-list", "--max-parents=0", "HEAD")
  block = {"reconstructed": True, "committed_in": first, "command": "python -m exp.run",
           "note": "after the fact"}
  _write(repo, "results/r/results.json", json.dumps({"provenance": block, "loss": 1.5}))
  entry = _status(repo)
  assert (entry.status, entry.stale) == ("reconstructed", None)  # never "current"
  _write(repo, "pkg/mid.py", "def f():\n  return 3\n")
  assert _status(repo).status == "reconstructed, stale"
  _write(repo, "results/r/results.json", json.dumps(
      {"provenance": {"commit": "0" * 40, "command": "python -m exp.run"}}))
  assert _status(repo).status == "unknown commit"
  _write(repo, "results/r/results.json", json.dumps({"loss": 1.5}))
  assert _status(repo).status == "no provenance"


def test_readme_rows_take_the_worst_state_of_their_files(tmp_path):
  repo = _repo(tmp_path)
  _write(repo, "results/s/results.json", json.dumps({"loss": 2.0}))
  _write(repo, "README.md", "| topic | result |\n| --- | --- |\n"
         "| [one](docs/a.md) | [1.5](results/r/results.json) |\n"
         "| [two](docs/b.md) | [all](results/) |\n| three | no link |\n")
  table = results_status.rows(str(repo), results_status.collect(str(repo)))
  assert [(r.line, r.topic, r.state) for r in table] == [(3, "one", "current"),
                                                         (4, "two", "unverified")]
  assert table[1].files == ["results/r/results.json", "results/s/results.json"]
  _write(repo, "pkg/core.py", "SCALE = 4\n")
  table = results_status.rows(str(repo), results_status.collect(str(repo)))
  assert [r.state for r in table] == ["stale", "stale"]


def test_every_readme_row_links_results_that_carry_provenance():
  # The project's rule (issue 27): a README number whose file does not say which code and
  # command made it fails here. A reconstructed block counts: it says so and names its commit.
  table = results_status.readme_rows(ROOT)
  assert len(table) >= 10, "the README's results table was not found"
  for line, topic, files in table:
    for rel in files:
      assert os.path.isfile(os.path.join(ROOT, rel)), (line, topic, rel)
      block = results_status.read_provenance(ROOT, rel)
      assert block is not None, f"README line {line} ({topic}): {rel} has no provenance block"
      assert block.get("commit") or block.get("committed_in"), (line, rel, block)
      assert block.get("command") or block.get("argv") or block.get("reconstructed"), (line, rel)
