"""Dense versus MoE at equal active FFN compute, on the default corpus, with the same tokens.

  python -m experiments.moe_vs_dense [--config=experiments/configs/moe_vs_dense.py] [--workdir=runs/moe_vs_dense]

`base` is the dense model: its FFN has width d_ff. An MoE setting (E experts, top-k) replaces every
FFN with E SwiGLU experts of width d_ff / k, so the k experts a token visits hold d_ff hidden units
in all and the FFN FLOPs per token match dense (the router adds d_model * E per token). The study
has two stages, each a list of points of a restartable sweep (train/studies/sweep.py):

  1. sweep: dense and every MoE setting of sweep.settings at seed sweep.seed;
  2. seeds: dense and one MoE setting (`compare`; "" = the sweep's lowest final validation loss)
     at every seed of `seeds`; the sweep's runs at sweep.seed are reused.

A seed sets both the initialisation and the data order (train.seed), so dense and MoE at one seed
see the same batches in the same order.

Capacity dispatch is used: on a CPU, XLA lowers jax.lax.ragged_dot (dropless) to a masked dense
matmul over all experts, so dropless costs n_experts / top_k times the active FLOPs
(train/studies/moe_measures.py measures both from the compiled step).

`--config=experiments/configs/moe_vs_dense.py:tiny` is a one-MoE-setting, two-seed, two-step version
for tests.
"""

import ml_collections

import experiments.configs as configs
from experiments.configs import default


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.study = "moe_vs_dense"

  b = default.get_config()
  b.data.seq_len = 128
  b.model.update(d_model=128, n_heads=4)  # d_ff: default.py's 512
  # The dense arm (model.moe.n_experts stays 0); each MoE point sets its experts, top_k and
  # d_expert. Capacity dispatch at MoEConfig's capacity_factor of 1.25.
  b.model.moe.dispatch = "capacity"
  # 600 steps of 16 x 128 tokens (1.23M tokens), twice the first measurement's 300 steps.
  b.train.update(steps=600, warmup_steps=40, eval_every=100, eval_batches=16)
  b.checkpoint.update(every_steps=200, keep=2)
  c.base = b

  c.sweep = ml_collections.ConfigDict()
  # MoE settings "E<experts>-k<top_k>", each expert d_ff / top_k wide. The expert count at top-2,
  # and top-1 at 8 experts: eight 600-step runs in all were what 2 CPU cores shared with other
  # jobs (6-14 minutes a run) allowed in about 80 minutes.
  # More: --config.sweep.settings='("E8-k1", "E8-k2", "E16-k1", "E16-k2")'.
  c.sweep.settings = ("E8-k1", "E8-k2", "E16-k2")
  c.sweep.seed = 0
  c.compare = ""  # "E8-k2" etc.; "" = the sweep's best MoE setting
  c.seeds = (0, 1, 2)

  c.launch = configs.launch_section("llmlab-moe-vs-dense", "01:00:00")

  if preset == "tiny":
    configs.shrink_to_smoke_test(b)
    b.data.seq_len = 32
    b.model.update(d_model=32, n_heads=2, n_kv_heads=1, d_ff=64, n_layers=2)
    b.train.eval_every = 2
    c.sweep.settings = ("E4-k2",)
    c.seeds = (0, 1)
  elif preset:
    raise ValueError(f"unknown preset {preset!r}; allowed: tiny")
  return c
