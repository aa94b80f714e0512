"""What every experiment script shares: process set-up and one-line error reporting."""

from __future__ import annotations

import json
import logging
import sys


def setup() -> None:
  """Quiet, predictable logs: absl INFO chatter from orbax off, warnings kept."""
  logging.getLogger("absl").setLevel(logging.WARNING)
  for name in ("orbax", "jax._src.xla_bridge"):
    logging.getLogger(name).setLevel(logging.ERROR)


def fail(error: Exception) -> None:
  """Prints `error: <one line>` and exits with status 2, without a traceback."""
  print(f"error: {error}", file=sys.stderr, flush=True)
  sys.exit(2)


def format_summary(summary: dict) -> str:
  return json.dumps(summary, default=str)


def define_stage_flags(stage: str, init_help: str) -> None:
  """The flags of an alignment stage script (experiments.sft, dpo, grpo)."""
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", f"experiments/configs/{stage}.py", "Experiment config.")
  flags.DEFINE_string("workdir", None, "Directory of this run (checkpoints, metrics, tokenizer).")
  flags.DEFINE_string("init_workdir", "", init_help)
  flags.DEFINE_string("results_dir", "", "Also write results.json and curves.png here.")
  flags.mark_flag_as_required("workdir")


def run_stage(stage: str) -> None:
  """main() of an alignment stage script: trains train.<stage> from the flags, writes its
  results, prints the summary; a bad setting or file is a one-line error."""
  import importlib

  from absl import flags

  setup()
  from train import align_loop  # after setup: imports jax

  fv = flags.FLAGS
  module = importlib.import_module(f"train.{stage}")
  try:
    summary = module.train(fv.config, fv.workdir, fv.init_workdir)
    result = align_loop.write_results(fv.workdir, summary, module.CURVES, fv.results_dir)
  except (ValueError, FileNotFoundError, align_loop.NonFiniteLoss) as e:
    fail(e)
  print(format_summary({k: v for k, v in result.items() if not k.endswith("_curve")}), flush=True)
