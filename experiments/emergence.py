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
from ml_collections import config_flags

from train import cli
from train.studies import emergence_tasks as tasks
from train.studies import sweep as sweep_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script. Defined on demand, not at import, so tests and other scripts can
  import its functions beside other experiment scripts (absl refuses a flag defined twice)."""
  config_flags.DEFINE_config_file("config", "experiments/configs/emergence.py", "Study config.")
  flags.DEFINE_string("workdir", "runs/emergence", "Root of the study: data, one sub-workdir per size.")
  flags.DEFINE_enum("launcher", "local", sweep_lib.LAUNCHERS, "How pending sizes are trained.")
  flags.DEFINE_string("point", "", "Train and evaluate only this size (what the launchers hand out).")
  flags.DEFINE_string("results_dir", "", "Where results and plots go; empty = the workdir.")


def main(argv):
  del argv
  cli.setup()
  cfg = FLAGS.config
  try:
    base, points = tasks.make_points(cfg, FLAGS.workdir)
    done = sweep_lib.launch(
        FLAGS.workdir, base, points, launcher=FLAGS.launcher, point=FLAGS.point, argv=sys.argv,
        job_name=cfg.launch.job_name, slurm_options=tuple(cfg.launch.slurm_options),
        on_done=lambda workdir, _: tasks.evaluate_point(workdir, cfg))
    if FLAGS.point:
      return
    if not done:
      finished = len(points) - len(sweep_lib.pending(FLAGS.workdir, points))
      print(f"{finished} of {len(points)} sizes done; rerun this command to continue or collect",
            file=sys.stderr)
      if FLAGS.launcher == "local" or not finished:
        return
    summary = tasks.report(FLAGS.workdir, points, cfg, FLAGS.results_dir or FLAGS.workdir)
  except (ValueError, FileNotFoundError) as e:
    cli.fail(e)
  out = sys.stderr if FLAGS.launcher == "print" else sys.stdout
  print(cli.format_summary({"sizes": summary["sizes"], "by_digits": summary["by_digits"]}), file=out)


if __name__ == "__main__":
  cli.run(main, define_flags)
