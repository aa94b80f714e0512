"""A tiny model for smoke tests and quick checks: compiles and steps in about a second.

Set data.paths (the default stdlib corpus works too, but tokenizing it takes ~20 s).
"""

from experiments.configs import default


def get_config():
  c = default.get_config()
  c.data.update(seq_len=32, vocab_size=300)
  c.model.update(d_model=32, n_layers=2, n_heads=4, d_ff=64)
  c.train.update(steps=6, batch_size=8, lr=1e-2, warmup_steps=2, log_every=1, eval_every=3,
                 eval_batches=2)
  c.checkpoint.update(every_steps=3, keep=5)
  return c
