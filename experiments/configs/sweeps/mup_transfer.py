"""muP transfer on 2 CPU cores: 4 widths (8x span) x 6 learning rates x SP/muP x 2 seeds.

Two-layer models of head width 16 at d_model 32, 64, 128 and 256 (muP's base width: 32), each
trained 300 steps of 16 x 64 tokens on the standard-library corpus with a 512-token BPE, at
learning rates 2^-10 .. 2^-5 (factor 2 apart), cosine schedule as in the default config.

  python -m experiments.mup_transfer --workdir=runs/mup_transfer --results_dir=results/mup_transfer
"""

import ml_collections

import experiments.configs as configs
from experiments.configs import default


def base_config() -> ml_collections.ConfigDict:
  c = default.get_config()
  c.data.seq_len = 64
  c.data.vocab_size = 512
  c.train.update(steps=300, warmup_steps=30, log_every=100, eval_every=10**9, eval_batches=16)
  c.checkpoint.update(every_steps=300, keep=1)
  return c


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  if preset == "tiny":
    return tiny()
  c = ml_collections.ConfigDict()
  c.study = "mup_transfer"
  c.base = base_config()
  c.n_layers = 2
  c.head_dim = 16
  c.ffn_mult = 3
  c.widths = (32, 64, 128, 256)
  c.base_width = 32
  c.lrs = tuple(2.0 ** k for k in range(-10, -4))
  c.parametrizations = ("sp", "mup")
  c.seeds = (0, 1)
  c.launch = configs.launch_section("llmlab-mup-transfer", "01:00:00")
  return c


def tiny() -> ml_collections.ConfigDict:
  """Two widths, two rates, one seed, 2-step runs on a tiny vocabulary: the end-to-end test."""
  c = get_config()
  configs.shrink_to_smoke_test(c.base)
  c.base.data.paths = ""
  c.base.data.seq_len = 16
  c.widths = (16, 32)
  c.base_width = 16
  c.lrs = (1e-3, 1e-2)
  c.seeds = (0,)
  return c
