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

import sys

from absl import flags
from ml_collections import config_flags

from experiments import common

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
  common.define_profile_steps_flag()


def main(argv):
  del argv
  common.setup()
  from sharding import distributed  # before anything touches a device

  try:
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  except (ValueError, RuntimeError) as e:  # bad flags, or no coordinator answered in time
    common.fail(e)
  import jax

  from train import loop

  try:
    summary = loop.train(FLAGS.config, FLAGS.workdir, common.profile_steps())
  except (ValueError, loop.NonFiniteLoss) as e:
    common.fail(e)
  if jax.process_index() == 0:
    print(common.format_summary(summary), flush=True)


if __name__ == "__main__":
  common.run(main, define_flags)
