"""Small configs shared by the tests."""

import ml_collections

from experiments.configs import default


def tiny_config(paths: str, **overrides) -> ml_collections.ConfigDict:
  """The default config shrunk to a model that compiles and steps in about a second."""
  c = default.get_config()
  c.data.paths = paths
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
  for dotted, value in overrides.items():
    node = c
    *parents, leaf = dotted.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c
