"""train/metrics.py: metrics.jsonl survives a run killed in the middle of writing a record."""

import pytest

from train import metrics as metrics_lib


def test_torn_last_line_is_skipped(tmp_path):
  """Catches: read_jsonl failing on the partial last line kill -9 leaves (results, plots and
  the tests' loss comparisons read every run's metrics.jsonl)."""
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 2.5}\n{"step": 2, "loss": 2.4}\n{"step": 3, "lo')
  assert metrics_lib.read_jsonl(str(path)) == [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.4}]


def test_corrupt_line_in_the_middle_is_an_error_naming_file_and_line(tmp_path):
  """Catches: a torn-line tolerance so wide that it also hides corruption inside the file."""
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
  with pytest.raises(ValueError, match=rf"{path}:2: not a JSON record"):
    metrics_lib.read_jsonl(str(path))


def test_resumed_writer_does_not_glue_a_record_onto_the_torn_line(tmp_path):
  """Catches: appending after a torn last line, which turns it into a corrupt middle line
  (every later read of the resumed run's metrics then fails)."""
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 2.5}\n{"step": 2, "lo')
  writer = metrics_lib.MetricsWriter(str(tmp_path))
  writer.write(2, {"loss": 2.4})
  writer.close()
  assert metrics_lib.read_jsonl(str(path)) == [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.4}]


def test_every_step_record_of_a_run_has_throughput_and_the_console_line_shows_it(tiny_run):
  """Catches: step 1 (the meter's first reading) or an evaluation step logged without
  tokens_per_sec / mfu, and a console line that drops the eval loss or the throughput."""
  import os

  records = metrics_lib.read_jsonl(os.path.join(tiny_run, "metrics.jsonl"))
  assert [r["step"] for r in records] == [1, 2, 3]  # tiny.py logs every step, evaluates step 3
  for r in records:
    assert r["tokens_per_sec"] > 0 and r["mfu"] > 0, r
  assert "eval_loss" in records[-1]
  line = metrics_lib.console_line(3, records[-1])
  assert line.startswith(f"step 3  loss {records[-1]['loss']:.4f}  eval_loss "), line
  assert " tokens/s  MFU " in line and "  lr " in line, line
  assert os.path.getsize(os.path.join(tiny_run, "curves.png")) > 0  # the run's loss plot


def test_peak_flops_takes_the_environments_reference_and_refuses_a_bad_one(monkeypatch):
  """Catches LLMLAB_PEAK_FLOPS ignored (every process would measure, and MFU would not compare
  across runs) and a zero or malformed value accepted (MFU would divide by it)."""
  import pytest

  from train import mfu

  for value, expected in (("2.5e11", 2.5e11), ("0", None), ("fast", None)):
    monkeypatch.setenv(mfu.PEAK_ENV, value)
    mfu.peak_flops.cache_clear()
    try:
      if expected is None:
        with pytest.raises(ValueError, match=mfu.PEAK_ENV):
          mfu.peak_flops()
      else:
        assert mfu.peak_flops() == expected
    finally:
      mfu.peak_flops.cache_clear()
