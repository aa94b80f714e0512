"""results.json of a training invocation (experiments.train --results_dir; make train writes
results/default_run): wall time, losses, the validation curve, the unigram entropy baseline and
a sample generated from the trained run."""

from __future__ import annotations

import json
import os

from train import files, metrics, provenance, saved_run

# The sample's settings; max_new_tokens shrinks to fit a model with a short context.
SAMPLE = dict(prompt="def ", max_new_tokens=120, temperature=0.8, seed=0)


def write_results(workdir: str, results_dir: str, summary: dict, wall_s: float) -> None:
  """results.json of the run: this invocation's wall time (data preparation and compiles
  included; a resumed run's covers only its own steps, and start_step says where it began), the
  losses from metrics.jsonl, the unigram entropy baseline and a sample (SAMPLE's settings).

  summary is what train.pretrain.train returns."""
  records = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  evals = [{"step": r["step"], "eval_loss": r["eval_loss"]} for r in records if "eval_loss" in r]
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  max_seq_len = config["model"]["max_seq_len"]
  # As many new tokens as SAMPLE asks, within the model's context (a small test model's is short).
  n_new = min(SAMPLE["max_new_tokens"], max_seq_len - 8)
  sample = saved_run.generate(workdir, SAMPLE["prompt"], n_new, temperature=SAMPLE["temperature"],
                              seed=SAMPLE["seed"])
  os.makedirs(results_dir, exist_ok=True)
  files.write_json_atomic(os.path.join(results_dir, "results.json"), {
      "provenance": provenance.provenance(config), "workdir": workdir, "invocation_wall_time_s": wall_s,
      "start_step": summary.get("start_step"), "final_step": summary.get("final_step"),
      "params": summary.get("params"), "final_train_loss": summary.get("loss"),
      "final_eval_loss": summary.get("eval_loss"), "eval": evals,
      "unigram_entropy": summary.get("unigram_entropy"),
      "sample": {**SAMPLE, "max_new_tokens": n_new, "text": sample["text"]},
  }, indent=2)
