"""Draft model of the speculative-decoding benchmark: 2 layers at d_model 256, MQA.

It must share the target's tokenizer: copy runs/decode_target/tokenizer.json into the draft's
workdir before training (training reuses a tokenizer.json it finds there), as
experiments/decode_bench.py's docstring shows.

  python -m experiments.train --workdir=runs/decode_draft --config=experiments/configs/decode_draft.py
"""

import ml_collections

from experiments.configs import default


def get_config() -> ml_collections.ConfigDict:
  c = default.get_config()
  c.data.seq_len = 512
  c.model.d_model = 256
  c.model.n_layers = 2
  c.model.n_heads = 4
  c.model.n_kv_heads = 1
  c.model.d_ff = 768
  # The target's schedule and batches (same seed, so the same data order): the draft sees the
  # same tokens and differs only in size.
  c.train.steps = 60
  c.train.batch_size = 4
  c.train.lr = 3e-3
  c.train.warmup_steps = 10
  c.train.log_every = 5
  c.train.eval_every = 30
  c.train.eval_batches = 4
  c.checkpoint.every_steps = 20
  return c
