"""Emergence ladder: five model sizes trained on the stdlib corpus mixed with digit-spaced
addition, evaluated on held-out problems of 1 to 3 digits (~15 minutes on 2 busy CPU cores).

  python -m experiments.emergence [--config=experiments/configs/emergence.py] [--workdir=runs/emergence]

`--config=experiments/configs/emergence.py:tiny` is a two-size, few-step version for tests.
"""

import ml_collections

import experiments.configs as configs
from experiments.configs import default


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.study = "emergence"

  b = default.get_config()
  b.data.seq_len = 64  # problems are ~10 tokens; short rows keep small models cheap
  b.data.vocab_size = 512
  b.train.update(steps=1500, batch_size=32, warmup_steps=30, log_every=50, eval_batches=16)
  b.train.eval_every = 10**9  # only the final step
  b.checkpoint.update(every_steps=200, keep=2)
  c.base = b
  c.models = ((1, 16), (1, 32), (2, 32), (2, 48), (2, 64))  # (n_layers, d_model): 3k to 107k
  c.head_dim = 16
  c.ffn_mult = 3

  c.data = ml_collections.ConfigDict()
  c.data.digits = (1, 2, 3)
  c.data.ops = ("+",)
  c.data.problems_per_digit = 20000  # drawn with replacement; held-out ones removed
  c.data.held_out_fraction = 0.2
  c.data.per_document = 16  # problems per training document, one per line
  c.data.spaced_digits = True  # one token per digit (see train/data/arithmetic.py)
  c.data.stdlib_fraction = 0.25  # share of the corpus's characters that is Python source
  c.data.seed = 0

  c.eval = ml_collections.ConfigDict()
  c.eval.problems_per_digit = 200  # held-out problems scored per size and digit count
  c.eval.shots = 2  # solved training problems before each question, as in few-shot prompting
  c.eval.batch_size = 50
  c.eval.seed = 1

  c.launch = configs.launch_section("llmlab-emergence", "01:00:00")

  if preset == "tiny":
    configs.shrink_to_smoke_test(b)
    b.data.seq_len = 32
    c.models = ((1, 16), (2, 16))
    c.data.update(digits=(1, 2), problems_per_digit=200, stdlib_fraction=0.2)
    c.eval.update(problems_per_digit=8, batch_size=8)
  elif preset:
    raise ValueError(f"unknown preset {preset!r}; allowed: tiny")
  return c
