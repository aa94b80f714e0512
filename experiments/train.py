"""Train (or resume) a language model.

  python -m experiments.train --workdir=runs/NAME [--config=experiments/configs/default.py]
      [--config.model.n_layers=4 --config.train.steps=100 ...] [--profile_steps=5:7]

Rerunning the same command resumes from the newest checkpoint; raising train.steps extends a
finished run.

Multi-host: run the same command once per process, adding
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I
(HOST:PORT of process 0). Under SLURM, Open MPI or on a TPU pod slice the flags can be left out:
JAX reads them from the environment. See docs/sharding.md.
"""

import json
import os
import time

from absl import flags
from ml_collections import config_flags

from train import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script. Defined on demand, not at import, so tests and other scripts can
  import its functions beside other experiment scripts (absl refuses a flag defined twice)."""
  config_flags.DEFINE_config_file("config", "experiments/configs/default.py", "Experiment config.")
  flags.DEFINE_string("workdir", None, "Directory of the run (checkpoints, metrics, tokenizer).")
  flags.mark_flag_as_required("workdir")
  flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT of process 0.")
  flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
  flags.DEFINE_integer("process_id", None, "Multi-host: this process's index, 0..num_processes-1.")
  cli.define_profile_steps_flag()
  flags.DEFINE_string(
      "results_dir", "", "Also write results.json here: wall time of this invocation, losses, "
      "validation curve, unigram entropy and a sample (make train: results/default_run).")


def main(argv):
  del argv
  cli.setup()
  from sharding import distributed  # before anything touches a device

  try:
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  except (ValueError, RuntimeError) as e:  # bad flags, or no coordinator answered in time
    cli.fail(e)
  import jax

  from train import loop, pretrain

  t0 = time.perf_counter()
  try:
    summary = pretrain.train(FLAGS.config, FLAGS.workdir, cli.profile_steps())
  except (ValueError, loop.NonFiniteLoss) as e:
    cli.fail(e)
  if jax.process_index() == 0:
    if FLAGS.results_dir:
      write_results(FLAGS.workdir, FLAGS.results_dir, summary, time.perf_counter() - t0)
    print(cli.format_summary(summary), flush=True)


SAMPLE = dict(prompt="def ", max_new_tokens=120, temperature=0.8, seed=0)


def write_results(workdir: str, results_dir: str, summary: dict, wall_s: float) -> None:
  """results.json of the run: this invocation's wall time (data preparation and compiles
  included; a resumed run's covers only its own steps, and start_step says where it began), the
  losses from metrics.jsonl, the unigram entropy baseline and a sample (SAMPLE's settings)."""
  from experiments import generate
  from train import files, metrics

  records = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  evals = [{"step": r["step"], "eval_loss": r["eval_loss"]} for r in records if "eval_loss" in r]
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    max_seq_len = json.load(f)["model"]["max_seq_len"]
  # As many new tokens as SAMPLE asks, within the model's context (a small test model's is short).
  n_new = min(SAMPLE["max_new_tokens"], max_seq_len - 8)
  sample = generate.run(workdir, SAMPLE["prompt"], n_new, temperature=SAMPLE["temperature"],
                        seed=SAMPLE["seed"])
  os.makedirs(results_dir, exist_ok=True)
  files.write_json_atomic(os.path.join(results_dir, "results.json"), {
      "workdir": workdir, "invocation_wall_time_s": wall_s,
      "start_step": summary.get("start_step"), "final_step": summary.get("final_step"),
      "params": summary.get("params"), "final_train_loss": summary.get("loss"),
      "final_eval_loss": summary.get("eval_loss"), "eval": evals,
      "unigram_entropy": summary.get("unigram_entropy"),
      "sample": {**SAMPLE, "max_new_tokens": n_new, "text": sample["text"]},
  }, indent=2)


if __name__ == "__main__":
  cli.run(main, define_flags)
