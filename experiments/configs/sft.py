"""SFT on the arithmetic task from a fresh model: the first stage of the alignment chain.

  python -m experiments.sft --workdir=runs/sft [--config=experiments/configs/sft.py]

The model is used only without --init_workdir (with it, the init_workdir's model is kept).
"""

import ml_collections

from experiments.configs import alignment
from model.config import ModelConfig
from train import config as config_lib


def get_config() -> ml_collections.ConfigDict:
  c = alignment.base()

  # A fresh model: ModelConfig's defaults (model/config.py), except
  c.model = config_lib.section(
      ModelConfig, max_seq_len=32)  # prompt "99+99=" (6) + eval.max_new_tokens (8) fits with room
  del c.model.vocab_size  # the embedding follows the tokenizer (train/align/stage.py)

  c.train.update(steps=2000, lr=3e-3, warmup_steps=50)

  # Stops at sft.stop_accuracy validation accuracy (train/config.py SftSettings says why 0.5).
  c.sft = config_lib.section(config_lib.SftSettings)
  return c
