"""muP transfer: validation loss against learning rate for several widths, under SP and muP.

  python -m experiments.mup_transfer [--sweep=experiments/configs/sweeps/mup_transfer.py]
      --workdir=runs/mup_transfer [--launcher=local|print|slurm] [--results_dir=results/mup_transfer]

Each (parametrization, width, learning rate, seed) is a point of a restartable sweep: rerun the
same command to continue or collect. When all are done it writes results.json (per width the mean
loss at each rate, the best rate, the drift of the best rate from the narrowest to the widest
width) and mup_transfer.png. train/studies/mup_transfer.py has the analysis.
"""

from __future__ import annotations


from absl import flags

from train import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script (cli.run defines them before parsing)."""
  from train.studies import sweep as sweep_lib

  sweep_lib.define_training_study_flags(
      "sweep", "experiments/configs/sweeps/mup_transfer.py", "runs/mup_transfer",
      "Root of the sweep: one workdir per point.")


def main(argv):
  del argv
  cli.setup()
  from train.studies import mup_transfer
  from train.studies import sweep as sweep_lib

  cfg = FLAGS.sweep
  out_dir = FLAGS.results_dir or FLAGS.workdir
  try:
    points = mup_transfer.make_points(cfg)
    if not sweep_lib.launch_training_study(FLAGS, cfg.base, points, cfg.launch):
      return
    summary = mup_transfer.report(FLAGS.workdir, points, cfg, out_dir)
  except ValueError as e:
    cli.fail(e)
  print(cli.format_summary({"runs": summary["runs"], "drift": summary["drift"], "results": out_dir}))


if __name__ == "__main__":
  cli.run(main, define_flags)
