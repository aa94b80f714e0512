"""A tiny model for smoke tests and quick checks: compiles and steps in about a second.

Set data.paths (the default stdlib corpus works too, but tokenizing it takes ~20 s).
"""

from experiments.configs import default


def get_config():
  c = default.get_config()
  c.data.seq_len = 32
  c.data.vocab_size = 300
  c.model.d_model = 32
  c.model.n_layers = 2
  c.model.n_heads = 4
  c.model.n_kv_heads = 2
  c.model.d_ff = 64
  c.train.steps = 6
  c.train.batch_size = 8
  c.train.lr = 1e-2
  c.train.warmup_steps = 2
  c.train.log_every = 1
  c.train.eval_every = 3
  c.train.eval_batches = 2
  c.checkpoint.every_steps = 3
  c.checkpoint.keep = 5
  return c
