"""muP transfer: validation loss against learning rate for several widths, under SP and muP.

  python -m experiments.mup_transfer [--sweep=experiments/configs/sweeps/mup_transfer.py]
      --workdir=runs/mup_transfer [--launcher=local|print|slurm] [--results_dir=results/mup_transfer]

Each (parametrization, width, learning rate, seed) is a point of a restartable sweep: rerun the
same command to continue or collect. When all are done it writes results.json (per width the mean
loss at each rate, the best rate, the drift of the best rate from the narrowest to the widest
width) and mup_transfer.png. train/studies/mup_transfer.py has the analysis.
"""

from __future__ import annotations

import os
import sys

from absl import flags
from ml_collections import config_flags

from train import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  from train.studies import sweep as sweep_lib

  config_flags.DEFINE_config_file(
      "sweep", "experiments/configs/sweeps/mup_transfer.py", "Sweep config (widths, rates, seeds).")
  flags.DEFINE_string("workdir", "runs/mup_transfer", "Root of the sweep: one workdir per point.")
  flags.DEFINE_enum("launcher", "local", sweep_lib.LAUNCHERS, "How pending points run.")
  flags.DEFINE_string("point", "", "Train only this point (the command the launchers hand out).")
  flags.DEFINE_string("results_dir", "", "Where results and plots go; empty = the workdir.")


def main(argv):
  del argv
  cli.setup()
  from train import provenance
  from train.studies import mup_transfer
  from train.studies import sweep as sweep_lib

  cfg = FLAGS.sweep
  out_dir = FLAGS.results_dir or FLAGS.workdir
  try:
    points = mup_transfer.make_points(cfg)
    done = sweep_lib.launch(
        FLAGS.workdir, cfg.base, points, launcher=FLAGS.launcher, point=FLAGS.point, argv=sys.argv,
        job_name=cfg.launch.job_name, slurm_options=tuple(cfg.launch.slurm_options))
    if FLAGS.point or not done:
      return
    rows = [{**r["meta"], "eval_loss": r["eval_loss"], "loss": r["loss"], "cpu_s": r["cpu_s"]}
            for r in sweep_lib.collect(FLAGS.workdir, points)]
    analysis = mup_transfer.analyse(rows)
    os.makedirs(out_dir, exist_ok=True)
    sweep_lib.write_jsonl(os.path.join(out_dir, "results.jsonl"), rows)
    summary = {"study": "mup_transfer", "provenance": provenance.provenance(cfg),
               "runs": len(rows), "cpu_s_total": sum(r["cpu_s"] for r in rows),
               "drift": {p: analysis[p]["drift"] for p in analysis}, "arms": analysis}
    sweep_lib.write_json(os.path.join(out_dir, "results.json"), summary)
    mup_transfer.plot(analysis, out_dir)
  except ValueError as e:
    cli.fail(e)
  print(cli.format_summary({"runs": len(rows), "drift": summary["drift"], "results": out_dir}))


if __name__ == "__main__":
  cli.run(main, define_flags)
