"""The alignment scripts end to end on a tiny model: SFT from scratch, DPO from it, GRPO from that,
a resumed run, and the one-line error of a malformed JSONL file."""

import json
import os
import re

from tests.helpers import run_script
from train import metrics as metrics_lib

SMALL = ["--config.train.loggers=jsonl", "--config.task.n_train=64", "--config.task.n_heldout=8", "--config.task.n_validation=8",
         "--config.eval.batch_size=8",
         "--config.eval.max_new_tokens=4", "--config.train.batch_size=4",
         "--config.train.log_every=1", "--config.train.eval_every=100",
         "--config.checkpoint.every_steps=1"]
TINY_MODEL = ["--config.model.d_model=32", "--config.model.n_layers=1", "--config.model.n_heads=2",
              "--config.model.n_kv_heads=1", "--config.model.d_ff=64"]


def _ok(proc):
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _logged_keys(workdir):
  keys = set()
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      keys |= set(json.loads(line))
  return keys


def test_sft_then_dpo_then_grpo_run_end_to_end(tmp_path):
  sft, dpo, grpo = (str(tmp_path / n) for n in ("sft", "dpo", "grpo"))
  done = run_script("experiments.sft", f"--workdir={sft}", "--config=experiments/configs/sft.py",
                    "--config.train.steps=2", *SMALL, *TINY_MODEL)
  out = _ok(done)
  assert out["final_step"] == 2 and "heldout_accuracy_end" in out
  # Pretraining's banner and console line (train/banner.py, train/metrics.py console_line).
  assert "llmlab sft\n  workdir  " in done.stdout and "\n  start    starting fresh\n" in done.stdout
  assert re.search(r"^step 2  loss \S+  eval/accuracy .* tokens/s  MFU .*  lr ", done.stdout,
                   re.MULTILINE), done.stdout
  trained = [r for r in metrics_lib.read_jsonl(os.path.join(sft, "metrics.jsonl")) if "loss" in r]
  assert [r["step"] for r in trained] == [1, 2]
  assert all(r["tokens_per_sec"] > 0 and r["mfu"] > 0 for r in trained), trained
  assert {"loss", "eval/accuracy"} <= _logged_keys(sft)
  for name in ("results.json", "curves.png", "tokenizer.json", "config.json"):
    assert os.path.exists(os.path.join(sft, name)), name

  out = _ok(run_script("experiments.dpo", f"--workdir={dpo}", f"--init_workdir={sft}",
                       "--config.train.steps=2", *SMALL))
  assert out["reference"] == "precomputed"
  assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
          "logps/chosen", "logps/rejected", "eval/accuracy"} <= _logged_keys(dpo)
  # Rerunning the finished run restores its last checkpoint and trains nothing more.
  out = _ok(run_script("experiments.dpo", f"--workdir={dpo}", f"--init_workdir={sft}",
                       "--config.train.steps=2", *SMALL))
  assert out["invocation_start_step"] == 2 and out["final_step"] == 2

  out = _ok(run_script("experiments.grpo", f"--workdir={grpo}", f"--init_workdir={dpo}",
                       "--config.train.steps=2", "--config.grpo.prompts_per_step=2",
                       "--config.grpo.group_size=2", "--config.grpo.max_new_tokens=4", *SMALL))
  assert out["final_step"] == 2
  assert {"reward/mean", "reward/std", "frac_reward_zero_std", "kl", "clip_ratio",
          "completion_length", "entropy", "eval/accuracy"} <= _logged_keys(grpo)


def test_malformed_jsonl_is_a_one_line_error(tmp_path):
  path = tmp_path / "pairs.jsonl"
  path.write_text('{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n{"prompt": "2+2="}\n',
                  encoding="utf-8")
  proc = run_script("experiments.dpo", f"--workdir={tmp_path / 'w'}",
                    f"--init_workdir={tmp_path / 'none'}", f"--config.data.train_path={path}")
  assert proc.returncode == 2
  assert proc.stderr.strip() == f"error: {path}:2: missing field 'chosen'"


def test_an_imported_model_fine_tunes_at_a_fine_tuning_rate_unless_one_is_chosen(tmp_path):
  """Catches: SFT on an imported model at the from-scratch rate 3e-3, a rate chosen on the
  command line (or by the user's config file) overridden, and a workdir trained here taken for
  an imported one."""
  from train.align import stage as stage_lib

  imported, trained = tmp_path / "imported", tmp_path / "trained"
  (imported / "hf").mkdir(parents=True)
  (imported / "hf" / "config.json").write_text("{}")
  trained.mkdir()
  argv = ["sft.py", "--workdir=w", f"--init_workdir={imported}"]
  assert stage_lib.finetune_lr("sft", str(imported), argv) == 2e-5
  assert stage_lib.finetune_lr("dpo", str(imported), argv) == 1e-6
  assert stage_lib.finetune_lr("sft", str(imported), argv + ["--config.train.lr=1e-4"]) is None
  assert stage_lib.finetune_lr("sft", str(imported), argv + ["--config=mine.py"]) is None
  assert stage_lib.finetune_lr("sft", str(trained), argv) is None
  assert stage_lib.finetune_lr("sft", "", argv) is None
