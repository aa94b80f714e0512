"""Group Relative Policy Optimisation from a trained policy, on task prompts or a JSONL of
{"prompt", "answer"}.

  python -m experiments.grpo --workdir=runs/grpo --init_workdir=runs/dpo
      [--config=experiments/configs/grpo.py] [--config.grpo.group_size=16 --config.grpo.beta=0]

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
      "grpo", "Workdir of the starting policy, which is also the frozen reference (beta > 0).")


def main(argv):
  del argv
  common.run_stage("grpo")


if __name__ == "__main__":
  common.run(main, define_flags)
