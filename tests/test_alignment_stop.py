"""The alignment stages choose on validation and report on test: SFT's early stop reads the
validation accuracy, and the reported accuracy is the test set's, which nothing reads to decide."""

import json
import os

from experiments.configs import sft as sft_config
from train.align import data as data_lib
from train.align import sft
from train.align import stage as stage_lib


def test_sft_stops_on_validation_and_reports_test(tmp_path, monkeypatch):
  # Catches the stop (or the logged eval/* curve) reading the test set, and a reported accuracy
  # taken from validation: validation says 1.0, test 0.0, so a stop on test would never come and
  # a report from validation would say 1.0.
  c = sft_config.get_config()
  c.task.update(n_train=16, n_heldout=6, n_validation=5)
  c.eval.update(batch_size=8, max_new_tokens=4)
  c.train.update(steps=3, batch_size=8, eval_every=1, log_every=1, warmup_steps=0)
  c.model.update(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64)
  val = [e.prompt for e in data_lib.task_examples(c.task, "validation")]
  test = [e.prompt for e in data_lib.task_examples(c.task, "test")]
  called = []

  def fake_evaluator(policy, examples, **kw):
    prompts = [e.prompt for e in examples]
    split = {tuple(val): "validation", tuple(test): "test"}[tuple(prompts)]
    def evaluate(params):
      called.append(split)
      return {"accuracy": 1.0 if split == "validation" else 0.0, "completion_chars": 1.0}
    return evaluate

  monkeypatch.setattr(stage_lib, "make_evaluator", fake_evaluator)
  summary = sft.train(c, str(tmp_path))
  assert summary["final_step"] == 1 and "stopped_early" in summary  # the first evaluation
  assert summary["test_accuracy"] == 0.0
  assert called == ["validation", "test", "validation", "test"]  # step 0 both; step 1; the end
  result = stage_lib.write_results(str(tmp_path), summary, sft.CURVES)
  assert result["test_accuracy_end"] == result["heldout_accuracy_end"] == 0.0
  assert [tuple(x) for x in result["validation_accuracy_curve"]] == [(0, 1.0), (1, 1.0)]
  with open(os.path.join(tmp_path, "results.json")) as f:
    saved = json.load(f)
  assert (saved["test_examples"], saved["validation_examples"]) == (6, 5)
