"""Scaling sweep: train models over sizes and compute budgets, fit L(N, D), plot.

  python -m experiments.scaling --sweep=experiments/configs/sweeps/cpu_small.py --workdir=runs/scaling
      [--launcher=local|print|slurm] [--results_dir=results/scaling]

Each point of the sweep is a normal training run in WORKDIR/points/NAME; finished points are
skipped and interrupted ones resume, so rerunning the command continues the sweep. When every
point is done the script collects the runs into results.jsonl, fits the Chinchilla law
L(N, D) = E + A / N^alpha + B / D^beta (Huber loss on log L from a grid of starts) and the
isoFLOP minima with their compute-optimal exponents, bootstraps intervals for both, and writes
results.json, loss_vs_flops.png and isoflop.png. With --launcher=print or slurm it hands the
pending points to a scheduler instead; rerun the same command afterwards to collect and fit.
The grid of points is train/studies/scaling_grid.py, the fits and plots train/studies/scaling_fit.py
(the law itself: train/studies/scaling_law.py).

sweep.mode "wsd" (experiments/configs/sweeps/cpu_wsd.py, accelerator.py) trains one stable run
per size and branches a cooldown from it at every budget (train/studies/wsd_plan.py); a budget
added later extends the same stable runs.
"""

from __future__ import annotations

import sys

from absl import flags

from train import cli
from train.studies import scaling_fit, scaling_grid
from train.studies import sweep as sweep_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script (cli.run defines them before parsing)."""
  sweep_lib.define_training_study_flags(
      "sweep", "experiments/configs/sweeps/cpu_small.py", "runs/scaling",
      "Root of the sweep: one sub-workdir per point.")


def main(argv):
  del argv
  cli.setup()
  cfg = FLAGS.sweep
  try:
    if cfg.get("mode", "cosine") == "wsd":  # stable runs and cooldown branches
      from train.studies import wsd_plan

      points, planned = scaling_grid.make_wsd_points(cfg, FLAGS.workdir)
      print(f"planned: {planned['wsd_flops']:.2e} training FLOPs, {planned['flops_ratio']:.2f}x "
            "training every cooldown point from scratch", file=sys.stderr)
      for name in wsd_plan.reopen_extended(FLAGS.workdir, points):
        print(f"{name}: extended for a larger budget", file=sys.stderr)
      # A scheduler runs points in parallel: hand out a cooldown once its stable run is done.
      launched = (points if FLAGS.launcher == "local" or FLAGS.point
                  else wsd_plan.ready(FLAGS.workdir, points))
    else:  # every point from scratch, its own cosine schedule
      points = launched = scaling_grid.make_points(cfg)
    if not sweep_lib.launch_training_study(FLAGS, cfg.base, points, cfg.launch, launched=launched):
      return
    summary = scaling_fit.report(FLAGS.workdir, points, cfg, FLAGS.results_dir or FLAGS.workdir)
  except ValueError as e:
    cli.fail(e)
  law = summary.get("law")
  line = {"runs": summary["runs"], "law": law and {k: round(law[k], 4) for k in ("E", "A", "B", "alpha", "beta")},
          "isoflop_n_exponent": summary["isoflop"] and round(summary["isoflop"]["n_exponent"], 3),
          "results": FLAGS.results_dir or FLAGS.workdir}
  print(cli.format_summary(line), file=sys.stderr if FLAGS.launcher == "print" else sys.stdout)


if __name__ == "__main__":
  cli.run(main, define_flags)
