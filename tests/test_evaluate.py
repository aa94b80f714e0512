"""train/evaluate.py and experiments.evaluate: a saved run scored on its own validation rows
reproduces its logged eval_loss; a mixture is scored per source, every row once."""

import json
import os

import pytest

from tests.helpers import run_script
from train import evaluate
from train import metrics as metrics_lib


def _logged_eval_loss(workdir: str) -> float:
  records = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  return [r["eval_loss"] for r in records if "eval_loss" in r][-1]


def test_loss_on_the_runs_own_rows_equals_its_logged_eval_loss(tiny_run):
  """Catches: parameters other than the last checkpoint's, other rows than the run's eval rows,
  the loss summed instead of averaged, a document mask or padding count that the training
  evaluation does not use."""
  r = evaluate.evaluate(tiny_run, batches=evaluate.RUN_ROWS, progress=False)
  assert r["step"] == 3
  assert r["loss"] == pytest.approx(_logged_eval_loss(tiny_run), rel=1e-5, abs=1e-6)
  assert r["perplexity"] == pytest.approx(2.718281828 ** r["loss"], rel=1e-6)


def test_a_mixture_is_scored_per_source_and_every_row_once(tiny_run):
  """Every row once: the whole is the row-weighted mean of the sources (each real row has
  seq_len counted targets). Catches padding rows that count, a last batch that wraps round and
  counts rows twice, and per-source rows taken from the wrong source."""
  corpus = os.path.dirname(tiny_run)
  sources = ({"paths": os.path.join(corpus, "doc[01].txt")},
             {"paths": os.path.join(corpus, "doc[23].txt")})
  r = evaluate.evaluate(tiny_run, data_overrides={"sources": sources}, split="all", batches=0,
                        progress=False)
  a, b = r["sources"]
  assert (a["source"], b["source"]) == ("data.sources[0]", "data.sources[1]")
  assert a["rows"] + b["rows"] == r["rows"] and r["rows"] % 8  # a padded last batch is exercised
  mean = (a["loss"] * a["rows"] + b["loss"] * b["rows"]) / r["rows"]
  assert r["loss"] == pytest.approx(mean, rel=1e-5)
  assert a["loss"] != pytest.approx(b["loss"], rel=1e-6)


def test_cli_scores_prepared_shards_and_writes_json(tiny_run, tmp_path):
  from train.data import pipeline as data_lib

  with open(os.path.join(tiny_run, "config.json")) as f:
    paths = json.load(f)["data"]["paths"]
  own = data_lib.source_folder(os.path.join(tiny_run, "data"),
                               data_lib.Source("data.paths", tuple(data_lib.parse_paths(paths))), "text")
  out = tmp_path / "eval.json"
  proc = run_script("experiments.evaluate", f"--workdir={tiny_run}", f"--shards={own}",
                    "--batches=-1", f"--out={out}",
                    n_devices=8)
  assert proc.returncode == 0, proc.stderr[-2000:]
  r = json.loads(out.read_text())
  assert r["loss"] == pytest.approx(_logged_eval_loss(tiny_run), rel=1e-5, abs=1e-6)
  assert "perplexity" in proc.stdout


def test_cli_bad_input_is_one_line(tmp_path, tiny_run):
  """Catches a traceback, or an error raised after loading the checkpoint, instead of one line."""
  proc = run_script("experiments.evaluate", f"--workdir={tiny_run}", "--data.seq_len=64")
  assert proc.returncode == 2 and "data.seq_len=64 exceeds" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1
  with pytest.raises(FileNotFoundError, match="no config.json"):
    evaluate.evaluate(str(tmp_path / "none"))
