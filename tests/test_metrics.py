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
