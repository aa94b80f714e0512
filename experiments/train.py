"""Train (or resume) a language model.

  python -m experiments.train --workdir=runs/NAME [--config=experiments/configs/default.py]
      [--config.model.n_layers=4 --config.train.steps=100 ...] [--profile_steps=5:7]
      [--print_config] [--dry_run]

Rerunning the same command resumes from the newest checkpoint; raising train.steps extends a
finished run.

Multi-host: run the same command once per process, adding
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I
(HOST:PORT of process 0). Under SLURM, Open MPI or on a TPU pod slice the flags can be left out:
JAX reads them from the environment. See docs/sharding.md.
"""

import time

from absl import flags
from ml_collections import config_flags

from train import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script (cli.run defines them before parsing)."""
  config_flags.DEFINE_config_file(
      "config", "experiments/configs/default.py", "Experiment config file; --config.KEY=VALUE "
      "overrides one field (--print_config lists them all).")
  flags.DEFINE_string("workdir", None, "Directory of the run (checkpoints, metrics, tokenizer).")
  flags.mark_flag_as_required("workdir")
  flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT of process 0.")
  flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
  flags.DEFINE_integer("process_id", None, "Multi-host: this process's index, 0..num_processes-1.")
  flags.DEFINE_boolean(
      "dry_run", False, "Check the settings, build the mesh, check the data sources and the memory "
      "pre-flight, print the start-up banner and exit: no data prepared, nothing written.")
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

  from train import loop, pretrain, run_report

  t0 = time.perf_counter()
  try:
    if FLAGS.dry_run:
      pretrain.dry_run(FLAGS.config, FLAGS.workdir)
      return
    summary = pretrain.train(FLAGS.config, FLAGS.workdir, cli.profile_steps())
  except (ValueError, loop.NonFiniteLoss) as e:
    cli.fail(e)
  if jax.process_index() == 0:
    if FLAGS.results_dir:
      run_report.write_results(FLAGS.workdir, FLAGS.results_dir, summary, time.perf_counter() - t0)
    print(cli.format_summary(summary), flush=True)


if __name__ == "__main__":
  cli.run(main, define_flags)
