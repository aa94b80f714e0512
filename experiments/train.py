"""Train (or resume) a language model.

  python -m experiments.train --workdir=runs/NAME [--config=experiments/configs/default.py]
      [--config.model.n_layers=4 --config.train.steps=100 ...]

Rerunning the same command resumes from the newest checkpoint; raising train.steps extends a
finished run.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from experiments import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "experiments/configs/default.py", "Experiment config.")
flags.DEFINE_string("workdir", None, "Directory of the run (checkpoints, metrics, tokenizer).")
flags.mark_flag_as_required("workdir")


def main(argv):
  del argv
  common.setup()
  from train import loop  # after setup: imports jax

  try:
    summary = loop.train(FLAGS.config, FLAGS.workdir)
  except (ValueError, loop.NonFiniteLoss) as e:
    common.fail(e)
  print(common.format_summary(summary), flush=True)


if __name__ == "__main__":
  app.run(main)
