"""The command line of an alignment stage script (experiments.sft, dpo, grpo).

The three scripts differ only in their stage and the help of --init_workdir; each is its docstring
and one call of run().
"""

from __future__ import annotations

from experiments import common


def run(stage: str, init_help: str) -> None:
  """The `__main__` of the stage's script: flags --config (experiments/configs/<stage>.py),
  --workdir, --init_workdir (init_help), --results_dir; then train.<stage> on them.

  The flags are defined here, on demand, not at import, so tests and other scripts can import the
  script beside other experiment scripts (absl refuses a flag defined twice).
  """
  common.run(lambda argv: common.run_stage(stage),
             lambda: common.define_stage_flags(stage, init_help))
