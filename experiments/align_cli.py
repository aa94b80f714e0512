"""The command line of the alignment stage scripts (experiments.sft, dpo, grpo).

  python -m experiments.<stage> --workdir=DIR [--init_workdir=DIR] [--config=FILE]
      [--config.KEY=VALUE ...] [--results_dir=DIR]

Rerunning the same command resumes from the newest checkpoint. Writes metrics.jsonl, TensorBoard
files, results.json and curves.png into the workdir (and results.json + curves.png into
--results_dir when given).

The three scripts differ only in their stage and the help of --init_workdir: each is its docstring
and one call of run().
"""

from __future__ import annotations

from experiments import common

# The help of --init_workdir: what each stage starts from.
INIT_HELP = {
    "sft": "Workdir to start from (pretraining or another stage); empty = a fresh model.",
    "dpo": "Workdir of the starting policy, which is also the frozen reference.",
    "grpo": "Workdir of the starting policy, which is also the frozen reference (beta > 0).",
}


def run(stage: str) -> None:
  """The `__main__` of the stage's script: flags --config (experiments/configs/<stage>.py),
  --workdir, --init_workdir, --results_dir; then train.<stage> on them.

  The flags are defined here, on demand, not at import, so tests and other scripts can import the
  script beside other experiment scripts (absl refuses a flag defined twice).
  """
  common.run(lambda argv: common.run_stage(stage),
             lambda: common.define_stage_flags(stage, INIT_HELP[stage]))
