"""The default scaling sweep: 18 runs on 2 CPU cores, about half an hour of CPU time.

Models from 3.4k to 360k non-embedding parameters (depth x width, head dim 16, MHA, SwiGLU 3x),
on the standard-library corpus with a 512-token BPE, at three compute budgets C = 6 N D. Each
budget trains the models whose tokens per parameter D / N fall in tokens_per_param, six per
budget; 1.2e13 training FLOPs in all. At this scale the loss-optimal model for a budget is
trained on hundreds of tokens per parameter (results/scaling), so the window reaches far above
Chinchilla's 20: the isoFLOP profiles need their minima inside them.

  python -m experiments.scaling --sweep=experiments/configs/sweeps/cpu_small.py --workdir=runs/scaling
"""

import ml_collections

import experiments.configs as configs
from experiments.configs import default


def base_config() -> ml_collections.ConfigDict:
  """The training config every point starts from; the sweep sets model shape and steps."""
  c = default.get_config()
  c.data.seq_len = 128
  c.data.vocab_size = 512  # a small vocabulary keeps the embedding from dominating tiny models
  c.train.log_every = 50
  c.train.eval_every = 10**9  # the final step is always evaluated; nothing in between is needed
  c.train.eval_batches = 32  # 65k held-out tokens: the loss differences we fit are ~0.05 nats
  c.checkpoint.update(every_steps=250, keep=2)
  return c


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.study = "scaling"
  c.base = base_config()
  # (n_layers, d_model): non-embedding N = 3.4k, 6.8k, 13.4k, 26.8k, 60k, 107k, 160k, 360k.
  c.models = ((1, 16), (2, 16), (1, 32), (2, 32), (2, 48), (2, 64), (3, 64), (3, 96))
  c.head_dim = 16
  c.ffn_mult = 3
  c.budgets = (1e11, 3e11, 1e12)  # C = 6 N D, with N the non-embedding parameters
  c.tokens_per_param = (1.0, 2000.0)  # the D / N window trained at each budget
  c.min_steps = 50  # shorter runs are dropped: their loss is mostly warm-up
  c.warmup_fraction = 0.05

  c.fit = ml_collections.ConfigDict()
  c.fit.delta = 1e-3  # Huber threshold on log L (Chinchilla's)
  c.fit.grid = "chinchilla"  # initialisations: "chinchilla" (4500) or "coarse" (243)
  c.fit.max_iter = 300
  c.fit.bootstrap = 200  # resamples for the confidence intervals
  c.fit.bootstrap_starts = 8  # each resample refits from the best starts of the full fit
  c.fit.level = 0.9
  c.fit.seed = 0

  c.launch = configs.launch_section("llmlab-scaling", "02:00:00")
  return c
