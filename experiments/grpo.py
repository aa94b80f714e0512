"""Group Relative Policy Optimisation from a trained policy, on task prompts or a JSONL of
{"prompt", "answer"}.

  python -m experiments.grpo --workdir=runs/grpo --init_workdir=runs/dpo
      [--config=experiments/configs/grpo.py] [--config.grpo.group_size=16 --config.grpo.beta=0]

Rerunning the same command resumes the run; train/align/cli.py lists what it writes.
"""

from train.align import cli as align_cli

if __name__ == "__main__":
  align_cli.run("grpo")
