"""Direct Preference Optimisation from a trained policy, on task pairs or a JSONL of
{"prompt", "chosen", "rejected"}.

  python -m experiments.dpo --workdir=runs/dpo --init_workdir=runs/sft
      [--config=experiments/configs/dpo.py] [--config.dpo.loss_type=ipo --config.dpo.beta=0.5]
      [--config.data.train_path=pairs.jsonl --config.data.eval_path=heldout.jsonl]

Rerunning the same command resumes the run; train/align/cli.py lists what it writes.
"""

from train.align import cli as align_cli

if __name__ == "__main__":
  align_cli.run("dpo")
