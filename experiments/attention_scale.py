"""Why attention divides by sqrt(d_k): the softmax at initialisation, and models trained without it.

  python -m experiments.attention_scale [--config=experiments/configs/attention_scale.py]
      [--out=results/attention_scale] [--workdir=runs/attention_scale]
      [--launcher=local|print|slurm] [--point=NAME]

Vaswani et al. (2017, section 3.2.1): if the components of q and k are independent with mean 0
and variance 1, q.k has variance d_k; large dot products push the softmax into regions of tiny
gradients, so scores are scaled by 1/sqrt(d_k). Two parts test that:

(a) init-D (train/studies/softmax_init.py): for each d_k, unit-variance queries and keys, and q, k
    from the model's own init; the variance of q.k, the softmax's entropy, its largest
    probability and the gradients reaching the scores and q, with and without the scale.
(b) train-D-scaled / -unscaled (train/studies/score_scale_training.py): llmlab's Transformer of
    fixed width with heads of d_head, its attention's score scale 1/sqrt(d_head) or 1, trained
    with llmlab's BPE, optimizer, loss and train step, same seed and data order for both arms;
    the held-out loss is recorded.

Each point's record is cached in WORKDIR/points/NAME/result.json (NAME ends in a hash of its
settings), so a rerun skips finished points; --launcher=print / slurm hand out the pending points
as commands (train/studies/sweep.py). The report (train/studies/score_scale.py) writes
results.json and attention_scale.png to --out.
"""

from __future__ import annotations

import sys

from absl import flags

from train import cli
from train.studies import score_scale
from train.studies import sweep as sweep_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script (cli.run defines them before parsing)."""
  sweep_lib.define_records_study_flags("attention_scale", "Cached data and one record per point.", "Where results.json and the plot go.")


def main(argv):
  del argv
  summary = sweep_lib.run_records_study(
      FLAGS, make_points=score_scale.make_points, compute_point=score_scale.compute_point,
      report=score_scale.report)
  if summary is None:
    return
  brief = {"init": {d: {arm: round(v[arm]["entropy"], 3) for arm in ("scaled", "unscaled")}
                    for d, v in summary["init"].items()},
           "val_loss_mean": {k: round(v["val_loss_mean"], 4) for k, v in summary["train"].items()}}
  print(cli.format_summary(brief), file=sys.stderr if FLAGS.launcher == "print" else sys.stdout)


if __name__ == "__main__":
  cli.run(main, define_flags)
