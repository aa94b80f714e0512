"""Lost in the middle (Liu et al. 2023) on synthetic key-value retrieval.

  python -m experiments.lost_in_middle [--config=experiments/configs/lost_in_middle.py]
      [--workdir=runs/lost_in_middle] [--init_workdir=RUN] [--results_dir=results/lost_in_middle]

Trains a small model on the task of train/studies/kv_retrieval.py once per seed of config.seeds (a
restartable sweep, one point per seed, so --launcher works as in the other studies), or takes a
model trained on it from --init_workdir, then measures exact match against the position of the
gold pair on held-out examples, for several numbers of pairs k, some beyond what training showed,
with the query after the pairs ("after") and also before them ("both"): per seed with Wilson
intervals, and the mean over seeds with a bootstrap over the examples paired across seeds.
Writes results.jsonl (one row per variant, k and position), results.json (the summary, the
training runs, the training distribution of answer positions, Liu et al.'s numbers) and
lost_in_middle.png.

Every training example is right-padded with the tokenizer's padding token to exactly
data.seq_len tokens, so with its end-of-text it fills one packed row: examples never share a
row (no key from another example to confuse), each starts its row at position 0 as an evaluation
prompt does, and the padding comes after it, where causal attention never reads it (left
padding put up to 40 padding tokens before a short example, each one soaking up attention).
The loss counts only the answers (train.answer_marker). The data and runs are
train/studies/retrieval_training.py, the evaluation train/studies/retrieval_eval.py.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from train import cli, provenance
from train.studies import retrieval_eval as eval_lib
from train.studies import retrieval_training
from train.studies import sweep as sweep_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script (cli.run defines them before parsing)."""
  sweep_lib.define_training_study_flags(
      "config", "experiments/configs/lost_in_middle.py", "runs/lost_in_middle",
      "Root of the study: data, the run, results.")
  flags.DEFINE_string("init_workdir", "", "Evaluate the model trained in this workdir instead of training.")


def main(argv):
  del argv
  cli.setup()
  cfg = FLAGS.config
  try:
    if FLAGS.init_workdir:
      runs, trained = {"init": FLAGS.init_workdir}, []
    else:
      base, points = retrieval_training.make_points(cfg, FLAGS.workdir)
      done = sweep_lib.launch(
          FLAGS.workdir, base, points, launcher=FLAGS.launcher, point=FLAGS.point, argv=sys.argv,
          job_name=cfg.launch.job_name, slurm_options=tuple(cfg.launch.slurm_options),
          stack_runs=FLAGS.stack_runs)
      if not done:
        if not FLAGS.point:
          print("the training runs are not finished; rerun this command", file=sys.stderr)
        return
      runs = {p.meta["seed"]: sweep_lib.point_dir(FLAGS.workdir, p.name) for p in points}
      trained = sweep_lib.collect(FLAGS.workdir, points)
    per_seed = {seed: eval_lib.evaluate(run_dir, cfg, FLAGS.workdir) for seed, run_dir in runs.items()}
    rows = eval_lib.combine(per_seed)
    out_dir = FLAGS.results_dir or FLAGS.workdir
    os.makedirs(out_dir, exist_ok=True)
    sweep_lib.write_jsonl(os.path.join(out_dir, "results.jsonl"), rows)
    summary = {
        "study": "lost_in_middle", "provenance": provenance.provenance(cfg),
        "machine": sweep_lib.machine_info(), "runs": runs,
        "training": [{k: r[k] for k in ("name", "meta", "params", "params_non_embedding", "tokens",
                                        "steps", "flops", "eval_loss", "wall_s")} for r in trained],
        "task": cfg.task.to_dict(), "answer_marker": cfg.base.train.answer_marker,
        "eval": cfg.eval.to_dict(), "liu_et_al": eval_lib.LIU_ET_AL,
        "training_answer_distance_share": retrieval_training.training_distances(cfg),
        "by_variant_and_k": eval_lib.summarise(rows),
        # Per seed (Wilson intervals): runs that learnt the retrieval and runs that did not
        # average into a mean that describes neither.
        "by_seed": {str(seed): eval_lib.summarise(seed_rows) for seed, seed_rows in per_seed.items()}}
    sweep_lib.write_json(os.path.join(out_dir, "results.json"), summary)
    eval_lib.plot(rows, out_dir, cfg.task.k_max)
  except (ValueError, FileNotFoundError) as e:
    cli.fail(e)
  print(cli.format_summary({k: {m: round(v, 3) for m, v in s.items() if m != "curve"}
                               for k, s in summary["by_variant_and_k"].items()}))


if __name__ == "__main__":
  cli.run(main, define_flags)
