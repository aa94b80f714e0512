"""Draft model of the speculative-decoding benchmark: 2 layers at d_model 256, MQA.

It must share the target's tokenizer: copy runs/decode_target/tokenizer.json into the draft's
workdir before training (training reuses a tokenizer.json it finds there), as
experiments/decode_bench.py's docstring shows.

  python -m experiments.train --workdir=runs/decode_draft --config=experiments/configs/decode_draft.py
"""

import ml_collections

from experiments.configs import decode_target


def get_config() -> ml_collections.ConfigDict:
  # The target's data, schedule and batches (same seed, so the same data order): the draft sees
  # the same tokens and differs only in size.
  c = decode_target.get_config()
  c.model.update(d_model=256, n_layers=2, n_heads=4, n_kv_heads=1, d_ff=768)
  return c
