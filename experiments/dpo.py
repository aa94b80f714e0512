"""Direct Preference Optimisation from a trained policy, on task pairs or a JSONL of
{"prompt", "chosen", "rejected"}.

  python -m experiments.dpo --workdir=runs/dpo --init_workdir=runs/sft
      [--config=experiments/configs/dpo.py] [--config.dpo.loss_type=ipo --config.dpo.beta=0.5]
      [--config.data.train_path=pairs.jsonl --config.data.eval_path=heldout.jsonl]

Rerunning the same command resumes from the newest checkpoint. Writes metrics.jsonl, TensorBoard
files, results.json and curves.png into the workdir (and results.json + curves.png into
--results_dir when given).
"""

from absl import flags

from experiments import common

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script. Defined on demand, not at import, so tests and other scripts can
  import its functions beside other experiment scripts (absl refuses a flag defined twice)."""
  common.define_stage_flags(
      "dpo", "Workdir of the starting policy, which is also the frozen reference.")


def main(argv):
  del argv
  common.run_stage("dpo")


if __name__ == "__main__":
  common.run(main, define_flags)
