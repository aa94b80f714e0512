"""Emergent abilities or a metric's artefact? A ladder of model sizes on code mixed with arithmetic.

  python -m experiments.emergence [--config=experiments/configs/emergence.py] [--workdir=runs/emergence]
      [--launcher=local|print|slurm] [--results_dir=results/emergence]

The corpus is the standard library's Python files mixed with addition problems (written to
WORKDIR/data/mix-HASH.jsonl, held-out problems excluded by train/data/arithmetic.py split). Every
size of the ladder is a point of a restartable sweep (train/studies/sweep.py). Each trained size is
scored on held-out problems of each digit count with exact match and three smooth metrics
(per-token accuracy, token edit distance, answer log-likelihood; train/studies/answer_metrics.py),
and all four are plotted against training FLOPs, with the p^L curve that Schaeffer et al. predict
exact match to follow from the per-token accuracy p on an L-token answer. The corpus, ladder,
scoring and report are train/studies/emergence_tasks.py.
"""

from __future__ import annotations

import sys

from absl import flags

from train import cli
from train.studies import emergence_tasks as tasks
from train.studies import sweep as sweep_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script (cli.run defines them before parsing)."""
  sweep_lib.define_training_study_flags(
      "config", "experiments/configs/emergence.py", "runs/emergence",
      "Root of the study: data, one sub-workdir per size.",
      "Train and evaluate only this size (what the launchers hand out).")


def main(argv):
  del argv
  cli.setup()
  cfg = FLAGS.config
  try:
    base, points = tasks.make_points(cfg, FLAGS.workdir)
    if not sweep_lib.launch_training_study(
        FLAGS, base, points, cfg.launch, unit="sizes",
        on_done=lambda workdir, _: tasks.evaluate_point(workdir, cfg)):
      return
    summary = tasks.report(FLAGS.workdir, points, cfg, FLAGS.results_dir or FLAGS.workdir)
  except (ValueError, FileNotFoundError) as e:
    cli.fail(e)
  out = sys.stderr if FLAGS.launcher == "print" else sys.stdout
  print(cli.format_summary({"sizes": summary["sizes"], "by_digits": summary["by_digits"]}), file=out)


if __name__ == "__main__":
  cli.run(main, define_flags)
