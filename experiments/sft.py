"""Supervised fine-tuning on the arithmetic task or a JSONL of {"prompt", "answer"}.

  python -m experiments.sft --workdir=runs/sft [--init_workdir=runs/pretrain]
      [--config=experiments/configs/sft.py] [--config.data.train_path=train.jsonl
      --config.data.eval_path=heldout.jsonl] [--results_dir=results/alignment/sft]

Without --init_workdir a fresh model (config.model) with a byte-level tokenizer is trained.

Rerunning the same command resumes the run; train/align/cli.py lists what it writes.
"""

from train.align import cli as align_cli

if __name__ == "__main__":
  align_cli.run("sft")
