"""Dense versus MoE at equal active FFN compute, on the default corpus, with the same tokens.

The dense model's FFN has width d_ff; the MoE model has 8 experts of width d_ff / 2 and routes each
token to 2 of them, so the FFN FLOPs per token match (the router adds d_model * 8 per token).
Capacity dispatch is the default here: on a CPU, XLA lowers jax.lax.ragged_dot (dropless) to a
masked dense matmul over all experts, so dropless costs n_experts / top_k times the active FLOPs
(experiments/moe_vs_dense.py measures both from the compiled step).
"""

from experiments.configs import default


def get_config():
  c = default.get_config()
  c.data.seq_len = 128
  c.model.update(d_model=128, n_heads=4, d_ff=512)
  c.model.moe.n_experts = 8  # the MoE arm; experiments/moe_vs_dense.py sets 0 for the dense arm
  c.model.moe.top_k = 2
  c.model.moe.d_expert = 256  # 2 experts x 256 = the dense d_ff of 512
  c.model.moe.dispatch = "capacity"
  c.train.update(steps=300, warmup_steps=40, eval_every=50)
  c.checkpoint.every_steps = 100
  return c
