"""Dense versus MoE at equal active FFN compute, on the default corpus, with the same tokens.

  python -m experiments.moe_vs_dense [--config=experiments/configs/moe_vs_dense.py] [--workdir=runs/moe_vs_dense]

`base` is the dense model: its FFN has width d_ff. An MoE setting (E experts, top-k) replaces every
FFN with E SwiGLU experts of width d_ff / k, so the k experts a token visits hold d_ff hidden units
in all and the FFN FLOPs per token match dense (the router adds d_model * E per token). The study
has two stages, each a list of points of a restartable sweep (train/studies/sweep.py):

  1. sweep: dense and every MoE setting of sweep.settings at every learning rate of `lrs`, at
     seed sweep.seed;
  2. seeds: dense and one MoE setting (`compare`; "" = the sweep's lowest final validation loss),
     each at its own best learning rate on validation, at every seed of `seeds`, and the MoE
     arm's `ablations`; the sweep's runs at sweep.seed are reused.

The test loss (train.test_batches, rows disjoint from validation's) is only reported.

A seed sets both the initialisation and the data order (train.seed), so dense and MoE at one seed
see the same batches in the same order.

Training uses capacity dispatch: on a CPU, XLA lowers jax.lax.ragged_dot (dropless) to a masked dense
matmul over all experts, so dropless costs n_experts / top_k times the active FLOPs
(train/studies/moe_measures.py measures both from the compiled step).

`--config=experiments/configs/moe_vs_dense.py:tiny` is a one-MoE-setting, one-lr, two-seed, two-step
version for tests.
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
  # d_expert. Training: capacity dispatch at MoEConfig's capacity_factor of 1.25 (dropless costs
  # E / k times the FFN FLOPs on a CPU). Evaluation: dropless (model.moe.eval_dispatch), so the
  # held-out loss does not depend on which rows share a batch; the test rows are also scored with
  # training's dispatch (the evaluation-dispatch ablation). Expert init: match_dense.
  b.model.moe.dispatch = "capacity"
  b.model.moe.eval_dispatch = "dropless"
  # 2400 steps of 16 x 128 tokens (4.9M tokens, 5.0 per active non-embedding parameter; the
  # first study ran 600 steps, 1.25 per parameter). Validation (16 batches, chooses the lrs and
  # the setting) and test (16 other batches, reported) are disjoint halves of the held-out rows.
  b.train.update(steps=2400, warmup_steps=100, eval_every=200, eval_batches=16, test_batches=16)
  b.checkpoint.update(every_steps=400, keep=2)
  c.base = b

  c.sweep = ml_collections.ConfigDict()
  # MoE settings "E<experts>-k<top_k>", each expert d_ff / top_k wide; the target, 8 x
  # top-2. More: --config.sweep.settings='("E8-k1", "E8-k2", "E16-k2")'.
  c.sweep.settings = ("E8-k2",)
  c.sweep.seed = 0
  # Every setting of the sweep tries each learning rate at sweep.seed; each arm then trains at
  # its own best (lowest validation loss) at every seed.
  c.lrs = (1.5e-3, 3e-3, 6e-3)
  c.compare = ""  # "E8-k2" etc.; "" = the sweep's best MoE setting
  c.seeds = (0, 1, 2)
  # Ablations of the MoE arm at every seed, against the same dense runs (test loss):
  # init_standard (dense's init in every expert: output 1/2 of dense's at init for top-2) and
  # shared_lr (dense's chosen lr). The evaluation-dispatch ablation needs no run.
  c.ablations = ("init_standard", "shared_lr")

  c.launch = configs.launch_section("llmlab-moe-vs-dense", "01:00:00")

  if preset == "tiny":
    configs.shrink_to_smoke_test(b)
    b.data.seq_len = 32
    b.model.update(d_model=32, n_heads=2, n_kv_heads=1, d_ff=64, n_layers=2)
    b.train.update(eval_every=2, test_batches=1)
    c.sweep.settings = ("E4-k2",)
    c.lrs = (3e-3,)
    c.seeds = (0, 1)
    c.ablations = ()  # the ablation runs' planning has its own test; the e2e run stays at 4 runs
  elif preset:
    raise ValueError(f"unknown preset {preset!r}; allowed: tiny")
  return c
