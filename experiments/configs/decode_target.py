"""Target model of the decoding benchmark: 105.4M parameters (12 layers at d_model 768, GQA with 12
query and 4 kv heads, d_ff 3072).

At this size a decode step reads 422 MB of float32 weights, so on a CPU, as on an accelerator,
decoding is bound by reading the weights and a verification pass over a few tokens costs little
more than a one-token step: the regime speculative decoding is for. Trained on the default corpus
(the Python standard library) at context 512, so 256 new tokens after a prompt stay inside the
trained positions. On 2 CPU cores one step takes about 9 s, so 800 steps take about two hours
(docs/inference.md gives the run's validation loss and what its greedy text looks like):

  python -m experiments.train --workdir=runs/decode_target --config=experiments/configs/decode_target.py
"""

import ml_collections

from experiments.configs import default


def get_config() -> ml_collections.ConfigDict:
  c = default.get_config()
  c.data.seq_len = 512
  c.model.update(d_model=768, n_layers=12, n_heads=12, n_kv_heads=4, d_ff=3072)
  c.train.update(steps=800, batch_size=4, lr=1e-3, warmup_steps=10, log_every=5, eval_every=400,
                 eval_batches=12)
  c.checkpoint.every_steps = 25
  return c
