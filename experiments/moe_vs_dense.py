"""Experiment: Mixture-of-Experts models against a dense model of the same active compute.

  python -m experiments.moe_vs_dense [--config=experiments/configs/moe_vs_dense.py] [--workdir=runs/moe_vs_dense]
      [--out=results/moe_vs_dense] [--launcher=local|print|slurm] [--point=NAME] [--partial]

Two stages of a restartable sweep (train/studies/sweep.py; the config's docstring has the design):
a sweep over MoE settings (E experts, top-k, each expert d_ff / k wide) and dense at every
learning rate of the config at one seed, then dense and one MoE setting (the sweep's best unless
the config names one), each at its own best learning rate on validation, at several seeds, with
the ablations of the MoE arm (dense's init in every expert; dense's learning rate).
Each run is a point in WORKDIR/points/NAME, done when its result.json exists, so a rerun skips
finished runs and resumes an interrupted one; the print and slurm launchers hand out the pending
points of the current stage (rerun after the sweep stage to hand out the seeds stage). When every
point is done the report writes OUT/results.json (per run: the validation curve, test loss, parameters,
analytic and compiled FLOPs per token, step time, expert load, drops; per arm of the seeds stage
the test loss's mean, standard deviation, range and 95% interval over seeds, the paired per-seed
differences with their interval, the ablations, the per-expert load) and
OUT/moe_vs_dense.png (train/studies/moe_comparison.py; per-run measurements in
train/studies/moe_measures.py).
"""

from __future__ import annotations

import json
import sys

from absl import flags
from ml_collections import config_flags

from train import cli
from train.studies import moe_comparison
from train.studies import sweep as sweep_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script (cli.run defines them before parsing)."""
  config_flags.DEFINE_config_file("config", "experiments/configs/moe_vs_dense.py", "Study config.")
  flags.DEFINE_string("workdir", "runs/moe_vs_dense", "Root of the study: one sub-workdir per run.")
  flags.DEFINE_string("out", "results/moe_vs_dense", "Where results.json and the plot go.")
  flags.DEFINE_enum("launcher", "local", sweep_lib.LAUNCHERS, "How pending runs are trained.")
  flags.DEFINE_string("point", "", "Train only this run (what the launchers hand out).")
  flags.DEFINE_bool("partial", False, "Train nothing; report the runs done so far (the compared "
                    "setting: the config's, else the best of the sweep runs done).")



def main(argv):
  del argv
  cli.setup()
  cfg = FLAGS.config
  try:
    if FLAGS.partial:  # collect what is done, train nothing
      points, setting, chosen_lr = moe_comparison.all_points(cfg, FLAGS.workdir, partial=True)
    else:
      for _ in range(2):  # the sweep stage, then (once it is done) the seeds stage
        points, setting, chosen_lr = moe_comparison.all_points(cfg, FLAGS.workdir)
        done = sweep_lib.launch(
            FLAGS.workdir, cfg.base, points, launcher=FLAGS.launcher, point=FLAGS.point,
            argv=sys.argv, job_name=cfg.launch.job_name,
            slurm_options=tuple(cfg.launch.slurm_options))
        if FLAGS.point or not done or setting:
          break
      if FLAGS.point:
        return
      if not done or not setting:
        print("runs pending; rerun this command when they are done, to continue or collect",
              file=sys.stderr)
        return
    results = moe_comparison.report(cfg, FLAGS.workdir, points, setting, chosen_lr, FLAGS.out)
  except (ValueError, FileNotFoundError) as e:
    cli.fail(e)
  out = sys.stderr if FLAGS.launcher == "print" else sys.stdout
  print(json.dumps({"compare": results["compare"], "chosen_lr": chosen_lr,
                    "missing": results["missing"],
                    "sweep": {f"{r['setting']}@{r['lr']:g}": round(r["final_eval_loss"], 4)
                              for r in results["sweep"]},
                    "test": results.get("seeds", {}).get("test")}, indent=2), file=out)

if __name__ == "__main__":
  cli.run(main, define_flags)
