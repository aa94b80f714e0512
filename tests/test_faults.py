"""train/studies/faults.py and fault_cases.py: the fault suite's verdicts, and one case run for
real (the rest run in `make faults`, minutes each on a 2-core machine)."""

from __future__ import annotations

import json
import os

from train.studies import fault_cases, faults


def test_a_refusal_is_judged_by_its_last_line_status_and_traceback():
  """Catches: a progress bar's carriage-return updates read as the last line (the error hidden
  behind them), a traceback or a wrong exit status passing as a clean refusal."""
  bar = "train:  50%|#####     | 3/6\rtrain:  67%|######    | 4/6"
  clean = faults.Outcome(2, "", f"{bar}\nerror: disk full\n\n", 1.0)
  assert clean.last_line == "error: disk full" and clean.one_line_error()
  assert faults.Outcome(0, "", bar, 1.0).last_line == "train:  67%|######    | 4/6"
  traced = faults.Outcome(2, "", "Traceback (most recent call last):\nerror: x\n", 1.0)
  assert not traced.one_line_error() and not faults.Outcome(1, "", "error: x", 1.0).one_line_error()


def test_what_a_workdir_lost_is_read_from_its_files(tmp_path):
  """Catches: a rerun's repeated steps not overriding the first run's (the loss comparison would
  pass on the old numbers), a torn last metrics line crashing the suite, and temporary files or
  unfinished checkpoints not counted as left behind."""
  with open(tmp_path / "metrics.jsonl", "w", encoding="utf-8") as f:
    for step, loss in [(1, 5.0), (2, 4.0), (2, 3.5)]:
      f.write(json.dumps({"step": step, "loss": loss}) + "\n")
    f.write('{"step": 3, "lo')
  assert faults.logged_losses(str(tmp_path)) == {1: 5.0, 2: 3.5}
  for d in ("checkpoints/2", "checkpoints/4.orbax-checkpoint-tmp", "data/src-a.tmp-12"):
    os.makedirs(tmp_path / d)
  (tmp_path / "config.json.tmp").write_text("", encoding="utf-8")
  assert faults.checkpoint_steps(str(tmp_path)) == [2]
  assert faults.in_progress_saves(str(tmp_path)) == ["4.orbax-checkpoint-tmp"]
  assert faults.leftovers(str(tmp_path)) == [
      "checkpoints/4.orbax-checkpoint-tmp", "config.json.tmp", "data/src-a.tmp-12"]
  suite = faults.Suite(root=str(tmp_path), reference={1: 5.0, 2: 3.5})
  assert faults.loss_gap(suite, str(tmp_path)) == 0.0
  suite.reference[3] = 3.0
  assert faults.loss_gap(suite, str(tmp_path)) == float("inf")


def test_a_full_disk_at_start_is_one_line_with_errno_and_leaves_no_tmp_file(tmp_path):
  """The real command line under RLIMIT_FSIZE (the tokenizer does not fit). Catches: the
  tokenizers library's bare 'File too large (os error 27)' traceback, a 0-byte
  tokenizer.json.tmp left behind, and any OSError escaping a script's main."""
  suite = faults.Suite(root=str(tmp_path), steps=2)
  suite.corpus = suite.path("corpus.jsonl")
  faults.write_corpus(suite.corpus, n_docs=50)
  record = fault_cases.disk_full_at_start(suite)
  assert record["passed"], record
  assert "tokenizer.json" in record["last_stderr_line"]
