"""Attention variants at equal parameter count (experiments/attention_variants.py).

The base is an MHA model; each variant changes only its attention and then its d_ff, so that
every arm has the MHA arm's non-embedding parameter count (to within one d_ff step). Trained on
the default corpus with the same tokens and steps.
"""

from experiments.configs import default

# name -> the model.* settings that make the variant (n_kv_heads of the base is n_heads: MHA).
VARIANTS = {
    "mha": {},
    "gqa": {"n_kv_heads": 2},
    "mqa": {"n_kv_heads": 1},
    "mla": {"kv_lora_rank": 32, "qk_rope_head_dim": 8},
    "swa": {"n_kv_heads": 2, "sliding_window": 32},
}


def get_config():
  c = default.get_config()  # 4 layers, d_ff 512, vocabulary 2048, batch 16, lr 3e-3
  c.data.seq_len = 128
  c.model.d_model = 128
  c.model.n_heads = 4
  c.model.n_kv_heads = 4  # the base is MHA
  c.train.steps = 300
  c.train.warmup_steps = 40
  c.train.eval_every = 100
  c.checkpoint.every_steps = 100
  return c
