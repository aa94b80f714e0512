"""SFT on the arithmetic task from a fresh model: the first stage of the alignment chain.

  python -m experiments.sft --workdir=runs/sft [--config=experiments/configs/sft.py]

The model is used only without --init_workdir (with it, the init_workdir's model is kept).
"""

import ml_collections

from experiments.configs import alignment, model_section


def get_config() -> ml_collections.ConfigDict:
  c = alignment.base()

  # A fresh model: ModelConfig's defaults (model/config.py), except
  c.model = model_section(
      max_seq_len=32)  # prompt "99+99=" (6) + eval.max_new_tokens (8) fits with room
  del c.model.vocab_size  # the embedding follows the tokenizer (train/align/stage.py)

  c.train.update(steps=2000, lr=3e-3, warmup_steps=50)

  # Stop at the first evaluation with at least this held-out accuracy: the chain wants a policy
  # that solves some problems but not all, so that DPO and GRPO have something left to learn
  # (GRPO's groups need per-prompt success rates strictly between 0 and 1).
  c.sft = ml_collections.ConfigDict()
  c.sft.stop_accuracy = 0.5
  return c
