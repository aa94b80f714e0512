"""Target model of the decoding benchmark: 8 layers at d_model 512, GQA (8 query, 2 kv heads).

Trained on the default corpus (the Python standard library) at context 512, so 256 new tokens after
a prompt stay inside the trained positions. On 2 CPU cores one step takes seconds, so the run is
bounded by train.steps (see docs/inference.md for the measured wall-clock time):

  python -m experiments.train --workdir=runs/decode_target --config=experiments/configs/decode_target.py
"""

import ml_collections

from experiments.configs import default


def get_config() -> ml_collections.ConfigDict:
  c = default.get_config()
  c.data.seq_len = 512
  c.model.update(d_model=512, n_layers=8, n_heads=8, n_kv_heads=2, d_ff=1536)
  c.train.update(steps=60, batch_size=4, warmup_steps=10, log_every=5, eval_every=30,
                 eval_batches=4)
  c.checkpoint.every_steps = 20
  return c
