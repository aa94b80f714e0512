"""Group Relative Policy Optimisation from a trained policy, on task prompts or a JSONL of
{"prompt", "answer"}.

  python -m experiments.grpo --workdir=runs/grpo --init_workdir=runs/dpo
      [--config=experiments/configs/grpo.py] [--config.grpo.group_size=16 --config.grpo.beta=0]

Rerunning the same command resumes from the newest checkpoint. Writes metrics.jsonl, TensorBoard
files, results.json and curves.png into the workdir (and results.json + curves.png into
--results_dir when given).
"""

from experiments import align_cli

if __name__ == "__main__":
  align_cli.run(
      "grpo", "Workdir of the starting policy, which is also the frozen reference (beta > 0).")
