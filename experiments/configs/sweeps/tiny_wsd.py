"""A WSD sweep of one size and two budgets (an 8-step stable run keeping steps 4 and 8, cooldowns
of 1 and 2 steps to steps 5 and 10), for the end-to-end test: set base.data.paths to a small corpus.

  python -m experiments.scaling --sweep=experiments/configs/sweeps/tiny_wsd.py \
      --sweep.base.data.paths=PATHS --workdir=/tmp/sweep
"""

import ml_collections

from experiments.configs.sweeps import tiny


def get_config() -> ml_collections.ConfigDict:
  c = tiny.get_config()
  c.mode = "wsd"
  c.accounting = "full"
  c.base.train.test_batches = 1
  c.base.checkpoint.keep = 1  # the newest, and the steps the cooldowns branch from
  c.budgets = (6.6e7, 1.33e8)  # 5 and 10 steps of 256 tokens at 51840 FLOPs per token
  c.decay_fraction = 0.2
  c.decay_shape = "1-sqrt"
  c.warmup_fraction = 0.2
  return c
