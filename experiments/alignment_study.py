"""Experiment: the alignment chain SFT -> DPO -> GRPO at several seeds, every setting chosen on
validation and every reported accuracy scored on test, with intervals.

  python -m experiments.alignment_study [--config=experiments/configs/alignment_study.py]
      [--workdir=runs/alignment_study] [--out=results/alignment_study]
      [--launcher=local|print|slurm] [--point=NAME]

Per seed: SFT (stopped on validation), DPO from it at every NLL weight of the config (the weight:
best final validation accuracy, mean over seeds), GRPO from the chosen DPO run (the step: best
validation accuracy, mean over seeds; its checkpoint scored on test). Restartable: each run is a
point in WORKDIR/points/NAME, done when its result.json exists; a rerun skips finished runs and
resumes an interrupted one. The print and slurm launchers hand out the pending runs of the
current stage (rerun once they are done for the next). When all are done, OUT/results.json (per
stage and seed the validation curve, the choices and what they read, test accuracy with Wilson
intervals per seed and the mean over seeds with a t-interval, the commands) and
OUT/alignment_study.png. train/studies/alignment_study.py has the protocol.
"""

from __future__ import annotations

import json
import sys

from absl import flags
from ml_collections import config_flags

from train import cli
from train.studies import sweep as sweep_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script (cli.run defines them before parsing)."""
  config_flags.DEFINE_config_file("config", "experiments/configs/alignment_study.py",
                                  "Study config.")
  flags.DEFINE_string("workdir", "runs/alignment_study", "Root of the study: one directory per run.")
  flags.DEFINE_string("out", "results/alignment_study", "Where results.json and the plot go.")
  flags.DEFINE_enum("launcher", "local", sweep_lib.LAUNCHERS, "How pending runs are trained.")
  flags.DEFINE_string("point", "", "Run only this point (what the launchers hand out).")


def main(argv):
  del argv
  cli.setup()
  from train.align import cli as align_cli  # after setup: imports jax
  from train.align import stage as stage_lib
  from train.studies import alignment_study

  try:
    results = alignment_study.run(
        FLAGS.config, FLAGS.workdir, FLAGS.out, launcher=FLAGS.launcher, point=FLAGS.point,
        argv=sys.argv, train_fn=align_cli.train_stage, score_fn=stage_lib.score_test)
  except alignment_study.Stopped as e:
    print(e, file=sys.stderr)
    sys.exit(1)
  except (ValueError, FileNotFoundError, stage_lib.NonFiniteLoss) as e:
    cli.fail(e)
  if results is None:
    if not FLAGS.point:
      print("runs pending; rerun this command when they are done, to continue or collect",
            file=sys.stderr)
    return
  out = sys.stderr if FLAGS.launcher == "print" else sys.stdout
  print(json.dumps({"choices": results["choices"], "test_mean": {
      k: {arm: (v["mean"], v["ci95"]) for arm, v in t["arms"].items()}
      for k, t in results["test"].items()}}, indent=2, default=str), file=out)


if __name__ == "__main__":
  cli.run(main, define_flags)
