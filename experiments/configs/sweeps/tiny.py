"""A 2-point sweep of 2- and 4-step runs, for the end-to-end test: set base.data.paths to a small corpus.

  python -m experiments.scaling --sweep=experiments/configs/sweeps/tiny.py \
      --sweep.base.data.paths=PATHS --workdir=/tmp/sweep
"""

import ml_collections

from experiments.configs import tiny
from experiments.configs.sweeps import cpu_small


def get_config() -> ml_collections.ConfigDict:
  c = cpu_small.get_config()
  b = tiny.get_config()  # seq_len 32, vocab 300, batch 8
  b.train.update(eval_every=10**9, eval_batches=1)
  b.checkpoint.every_steps = 2
  c.base = b
  c.models = ((1, 16),)  # N = 3.4k
  c.budgets = (1e7, 2e7)  # 2 and 4 steps of 256 tokens
  c.tokens_per_param = (0.01, 1e4)
  c.min_steps = 1
  c.fit.grid = "minimal"
  c.fit.max_iter = 100
  c.fit.bootstrap = 4
  c.fit.bootstrap_starts = 2
  return c
