"""The scaling study as researchers run it now, on 2 CPU cores: warmup-stable-decay with cooldowns
branched from one stable run per size, muP learning rates, FLOPs counted in full.

Eight models from 11.6k to 1.75M parameters (embeddings included; depth x width, head width 16,
SwiGLU 3x) on the standard-library corpus with a 512-token BPE, at budgets from 3e10 to 1e13
training FLOPs counted in full (model/config.py flops_per_token: every matmul, the tied head,
attention's score and value products). Per size one stable run at a constant learning rate after
warmup (5% of its shortest cooldown run) and per budget a cooldown branched from it over the
last 20% of the budget's steps, in the 1-sqrt shape (Hagele et al. 2024). muP (base width 32):
the learning rate is the one experiments.mup_transfer found best at the base width on its
validation split (results/mup_transfer), used unchanged at every width. Losses are reported on
a test split of the held-out rows (train.test_batches), apart from the validation rows the
learning rate was chosen on.

  python -m experiments.scaling --sweep=experiments/configs/sweeps/cpu_wsd.py \
      --workdir=runs/scaling_wsd --results_dir=results/scaling_wsd

A larger budget added to `budgets` extends the same stable runs (rerun the command).
"""

import ml_collections

from experiments.configs.sweeps import cpu_small


def get_config() -> ml_collections.ConfigDict:
  c = cpu_small.get_config()
  c.mode = "wsd"
  c.accounting = "full"  # N every parameter, C the training FLOPs in full
  b = c.base
  b.model.update(parametrization="mup", base_width=32, base_head_dim=16)
  b.train.lr = 2.0 ** -7  # experiments.mup_transfer's best rate at d_model 32 (validation)
  b.train.update(eval_batches=16, test_batches=16)
  # A 5-10M model needs ~1e14 FLOPs to see even 0.5 tokens per parameter: hours on this CPU,
  # a GPU's job (experiments/configs/sweeps/accelerator.py). 1.75M at 1e13 is as far as it goes.
  c.models = ((1, 16), (2, 16), (2, 32), (2, 48), (2, 64), (3, 96), (4, 128), (5, 160))
  c.budgets = (3e10, 1e11, 3e11, 1e12, 3e12, 1e13)  # training FLOPs, counted in full
  c.tokens_per_param = (0.4, 2000.0)  # D / N with N every parameter
  c.min_steps = 50
  c.warmup_fraction = 0.05
  c.decay_fraction = 0.2
  c.decay_shape = "1-sqrt"
  c.fit.bootstrap_starts = 0  # each resample refits from the whole grid below
  c.fit.bootstrap_grid = "coarse"
  c.fit.bootstrap = 100
  c.launch.job_name = "llmlab-scaling-wsd"
  return c
