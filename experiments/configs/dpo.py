"""DPO on arithmetic preference pairs (chosen the answer, rejected a near miss), from an SFT run.

  python -m experiments.dpo --workdir=runs/dpo --init_workdir=runs/sft
"""

import ml_collections

from experiments.configs import alignment
from train import config as config_lib


def get_config() -> ml_collections.ConfigDict:
  c = alignment.base()
  # 1000 pairs, the base's 300 steps of 64: about 19 passes. A pair differs from its near miss in
  # one digit, which the policy can only tell apart where it already knows the sum; the rest it
  # learns from seeing the pair again. The held-out set (and eval/rewards/* on held-out pairs) is
  # unaffected: the task splits problems by a hash of the prompt.
  c.task.n_train = 1000
  c.train.lr = 3e-4  # a tenth of SFT's: DPO adjusts a trained policy
  c.train.warmup_steps = 10

  # Sigmoid loss, beta 0.1, near-miss rejected answers, 0.2 x the chosen NLL, a precomputed
  # reference: train/config.py DpoSettings gives the reason for each.
  c.dpo = config_lib.section(config_lib.DpoSettings)
  return c
