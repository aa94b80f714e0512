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


# --- Tasks and the lm-evaluation-harness adapter --------------------------------------------------

def _reference_logp(run, context: str, continuation: str) -> float:
  """log P(continuation | start + context), by hand: one forward pass over the whole sequence,
  log-softmax summed at the continuation's positions."""
  import jax
  import numpy as np

  from model import transformer
  from train.data import tokenizer as tokenizer_lib

  ctx = run.prompt_ids(context)
  cont = tokenizer_lib.encode(run.tokenizer, continuation)
  seq = ctx + cont
  logits = np.asarray(transformer.apply(run.graphdef, run.params, np.asarray([seq[:-1]])))[0]
  logp = np.asarray(jax.nn.log_softmax(logits.astype(np.float64), axis=-1))
  return float(sum(logp[len(ctx) - 1 + i, tok] for i, tok in enumerate(cont)))


def test_harness_loglikelihood_matches_the_task_score_and_a_forward_pass(tiny_run, tmp_path):
  """The adapter (harness requests: objects with .args) and the in-loop task evaluation score a
  multiple-choice item alike, and both equal a hand-computed forward pass. Catches context and
  continuation swapped, the first continuation token dropped (its target sits at the context's
  last position), a padding or batching mix-up between choices of different lengths."""
  from types import SimpleNamespace

  from train import eval_tasks

  class FakeLM:  # lm_eval.api.model.LM's role: a base class with an __init__ of no arguments
    def __init__(self):
      self.base_initialised = True

  item = {"context": "alpha beta", "choices": [" gamma def return self", " x", " class"],
          "answer": 1}
  path = tmp_path / "task.jsonl"
  path.write_text(json.dumps(item) + "\n" + json.dumps({"prompt": "alpha", "target": "zzz"}) + "\n")
  lm = eval_tasks.harness_lm(tiny_run, batch_size=2, lm_class=FakeLM)
  assert isinstance(lm, FakeLM) and lm.base_initialised
  got = lm.loglikelihood([SimpleNamespace(args=(item["context"], c)) for c in item["choices"]])
  scores = eval_tasks.choice_scores(lm.scorer, item)
  reference = [_reference_logp(lm.scorer.run, item["context"], c) for c in item["choices"]]
  assert [lp for lp, _ in got] == pytest.approx(scores, abs=1e-5)
  assert scores == pytest.approx(reference, abs=1e-4)
  report = eval_tasks.evaluate_items(lm.scorer, eval_tasks.read_items(str(path)), max_new_tokens=4)
  assert report["mc_accuracy"] == float(max(range(3), key=lambda i: reference[i]) == 1)
  assert (report["mc_items"], report["gen_items"], report["exact_match"]) == (1, 1, 0.0)
  rolling = lm.loglikelihood_rolling([SimpleNamespace(args=(item["context"],))])
  assert rolling[0] == pytest.approx(_reference_logp(lm.scorer.run, "", item["context"]), abs=1e-4)
  until = lm.generate_until([SimpleNamespace(args=("alpha", {"until": ["\n"], "max_gen_toks": 4}))])
  plain, _ = _greedy(lm.scorer.run, "alpha", 4)
  assert until == [plain]


def _greedy(run, prompt, n):
  from train import saved_run

  results, note = saved_run.generate_batch(run, [prompt], n, temperature=0.0, stop=["\n"])
  return results[0]["continuation"], note


def test_task_files_are_checked_line_by_line(tmp_path):
  from train import eval_tasks
  from train.files import DataError

  path = tmp_path / "bad.jsonl"
  path.write_text('{"context": "a", "choices": ["b"], "answer": 3}\n')
  with pytest.raises(DataError, match=r"bad.jsonl:1: 'answer' must index"):
    eval_tasks.read_items(str(path))
  assert len(eval_tasks.read_items("experiments/tasks/arithmetic.jsonl")) == 12


# --- train.eval_tasks: tasks scored in the pretraining loop ---------------------------------------

def test_in_loop_tasks_are_logged_and_equal_the_saved_runs_scores(tiny_run):
  """tiny_run trains with train.eval_tasks = the first 4 items of experiments/tasks/arithmetic.jsonl
  (2 multiple choice, 2 generation): its eval step (3, the last) logs the task's numbers, the
  steps that do not evaluate (1, 2) none, and they equal evaluate_items on the saved run at step 3
  over the same items. Catches the live state scored with other parameters (a step behind, the
  initial ones), another tokenization or start token, a shifted target offset, items past the
  cap scored, the task not logged or logged at every step."""
  from train import eval_tasks, saved_run

  records = metrics_lib.by_step(tiny_run)
  assert [r["step"] for r in records] == [1, 2, 3]
  assert [r["step"] for r in records if "task/arithmetic/accuracy" in r] == [3]
  last = records[-1]
  scorer = eval_tasks.Scorer(saved_run.Loaded.of(tiny_run))
  report = eval_tasks.evaluate_items(
      scorer, eval_tasks.read_items("experiments/tasks/arithmetic.jsonl")[:4])
  assert (report["mc_items"], report["gen_items"]) == (2, 2)
  for name in ("accuracy", "mc_accuracy", "exact_match"):
    assert last[f"task/arithmetic/{name}"] == report[name]
  assert last["task/arithmetic/answer_logp"] == pytest.approx(report["answer_logp"], abs=1e-4)
  line = metrics_lib.console_line(3, last)
  assert "task/arithmetic/accuracy" in line and "answer_logp" not in line


def test_a_bad_task_path_is_refused_in_one_line_before_compiling(tmp_path):
  """Catches a missing task file found only at the first evaluation (after the data was
  prepared and the step compiled), and an error that does not name the setting."""
  from tests.helpers import tiny_config
  from train import config as config_lib
  from train import pretrain

  (tmp_path / "doc.txt").write_text("alpha beta gamma\n" * 50)
  cfg = tiny_config(str(tmp_path / "doc.txt"),
                    **{"train.eval_tasks": ("experiments/tasks/retrieval.jsonl,nope/missing.jsonl",)})
  workdir = tmp_path / "run"
  with pytest.raises(config_lib.ConfigError) as e:
    pretrain.train(cfg, str(workdir))
  assert str(e.value) == "train.eval_tasks: no task file nope/missing.jsonl"
  assert not (workdir / "data").exists() and not (workdir / "config.json").exists()
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt": "a"}\n')
  cfg.train.eval_tasks = (str(bad),)
  with pytest.raises(config_lib.ConfigError, match=r"^train.eval_tasks: .*bad.jsonl:1: expected"):
    pretrain.train(cfg, str(workdir))
  with pytest.raises(config_lib.ConfigError, match="names two files 'retrieval'"):
    config_lib.TrainSettings(eval_tasks=("a/retrieval.jsonl", "b/retrieval.jsonl"))
  assert config_lib.TrainSettings(eval_tasks=(" a.jsonl, b.jsonl",)).eval_tasks == ("a.jsonl",
                                                                                "b.jsonl")


def test_the_retrieval_task_file_is_its_documented_rule():
  """experiments/tasks/retrieval.jsonl is kv_retrieval.task_items() line for line, and each item
  is well formed: the answer retrieves the value paired with the queried key."""
  from train import eval_tasks
  from train.studies import kv_retrieval

  items = eval_tasks.read_items("experiments/tasks/retrieval.jsonl")
  assert items == kv_retrieval.task_items()
  for it in items:
    text = it.get("context", it.get("prompt"))
    *pairs, _, query = text.split()
    answer = it["choices"][it["answer"]] if "choices" in it else it["target"]
    assert answer == " " + dict(zip(pairs[::2], pairs[1::2]))[query]
