"""The command line of the alignment stage scripts (experiments.sft, dpo, grpo).

  python -m experiments.<stage> --workdir=DIR [--init_workdir=DIR] [--config=FILE]
      [--config.KEY=VALUE ...] [--results_dir=DIR]

Rerunning the same command resumes from the newest checkpoint. Writes metrics.jsonl, TensorBoard
files, results.json and curves.png into the workdir (and results.json + curves.png into
--results_dir when given).

The three scripts differ only in their stage and the help of --init_workdir: each is its docstring
and one call of run().
"""

from __future__ import annotations

import sys

from train import cli

# The help of --init_workdir: what each stage starts from.
INIT_HELP = {
    "sft": "Workdir to start from (pretraining or another stage); empty = a fresh model.",
    "dpo": "Workdir of the starting policy, which is also the frozen reference.",
    "grpo": "Workdir of the starting policy, which is also the frozen reference (beta > 0).",
}


def run(stage: str) -> None:
  """The `__main__` of the stage's script: flags --config (experiments/configs/<stage>.py),
  --workdir, --init_workdir, --results_dir; then train.<stage> on them.

  The flags are defined here, on demand, not at import, so tests and other scripts can import the
  script beside other experiment scripts (absl refuses a flag defined twice).
  """
  cli.run(lambda argv: run_stage(stage), lambda: define_stage_flags(stage, INIT_HELP[stage]))


def define_stage_flags(stage: str, init_help: str) -> None:
  """The flags of an alignment stage script (experiments.sft, dpo, grpo)."""
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file(
      "config", f"experiments/configs/{stage}.py", "Experiment config file; --config.KEY=VALUE "
      "overrides one field (--print_config lists them all).")
  flags.DEFINE_string("workdir", None, "Directory of this run (checkpoints, metrics, tokenizer).")
  flags.DEFINE_string("init_workdir", "", init_help)
  flags.DEFINE_string("results_dir", "", "Also write results.json and curves.png here.")
  flags.mark_flag_as_required("workdir")
  cli.define_profile_steps_flag()


def run_stage(stage: str) -> None:
  """main() of an alignment stage script: trains train.<stage> from the flags, writes its
  results, prints the summary; a bad setting or file is a one-line error."""
  from absl import flags

  cli.setup()
  from train.align import stage as stage_lib  # after setup: imports jax

  fv = flags.FLAGS
  # An imported model fine-tunes at a fine-tuning rate unless the command line chose one.
  lr = stage_lib.finetune_lr(stage, fv.init_workdir, sys.argv)
  if lr is not None:
    fv.config.train.lr = lr
    print(f"train.lr={fv.config.train.lr:g}: a fine-tuning rate for the imported model in "
          f"{fv.init_workdir} (set --config.train.lr to choose another)", flush=True)
  try:
    result = train_stage(stage, fv.config, fv.workdir, fv.init_workdir, fv.results_dir,
                         profile_steps=cli.profile_steps())
  except (ValueError, FileNotFoundError, stage_lib.NonFiniteLoss) as e:
    cli.fail(e)
  print(cli.format_summary({k: v for k, v in result.items() if not k.endswith("_curve")}), flush=True)


def train_stage(stage: str, config, workdir: str, init_workdir: str = "", results_dir: str = "",
                profile_steps=None) -> dict:
  """Trains (or resumes) train.align.<stage> in workdir and writes its results.json and
  curves.png (train/align/stage.py write_results); returns the results. What a stage script
  runs, and what experiments.alignment_study runs for each of its stage runs."""
  import importlib

  from train.align import stage as stage_lib

  module = importlib.import_module(f"train.align.{stage}")
  summary = module.train(config, workdir, init_workdir, profile_steps=profile_steps)
  return stage_lib.write_results(workdir, summary, module.CURVES, results_dir)
