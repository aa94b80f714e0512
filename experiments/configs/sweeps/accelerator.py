"""A Chinchilla-style sweep for one accelerator per point (TPU or GPU): 3.4M to 218M non-embedding
parameters, budgets from 1e16 to 1e18 training FLOPs counted in full, in the CPU study's WSD mode
(experiments/configs/sweeps/cpu_wsd.py): per size one stable run, per budget a cooldown branched
from it, muP learning rates from the narrowest width (tune train.lr there first with
experiments.mup_transfer on the accelerator; 1e-3 is a starting guess, not a measurement). The
CPU sweep's command with only flags changed:

  python -m experiments.scaling --sweep=experiments/configs/sweeps/accelerator.py \
      --sweep.base.data.paths='/data/corpus/*.jsonl' --workdir=/scratch/scaling --launcher=slurm

The job array first holds the 11 stable runs; rerun the command when they finish and it hands
out the 32 cooldowns. Planned (the "planned:" line it prints): 9.0e18 training FLOPs in full,
0.81x the 1.1e19 of training every cooldown point from scratch.

Point it at a corpus of a few billion tokens (the standard-library default has ~10^7 tokens,
which the larger budgets would repeat hundreds of times). Not run in this repository's CI or
on its development machine: the numbers above are planned from flops_per_token.
"""

import ml_collections

from experiments.configs.sweeps import cpu_small


def get_config() -> ml_collections.ConfigDict:
  c = cpu_small.get_config()
  b = c.base
  b.data.update(seq_len=1024, vocab_size=16384)
  b.model.dtype = "bfloat16"  # parameters stay float32; matmuls run in bfloat16
  b.model.attention_impl = "auto"  # cuDNN / Pallas flash attention where available
  b.train.update(
      batch_size=64,  # 65k tokens per step
      lr=1e-3, eval_batches=64)
  b.checkpoint.every_steps = 1000
  # (n_layers, d_model) with 64-wide heads: non-embedding N from 3.4M to 218M, ~1.5x apart.
  c.models = ((4, 256), (5, 320), (6, 384), (7, 448), (8, 512), (9, 576), (10, 640), (11, 704),
              (12, 768), (14, 896), (16, 1024))
  c.head_dim = 64
  c.budgets = (1e16, 3e16, 1e17, 3e17, 1e18)
  c.tokens_per_param = (2.0, 300.0)  # around Chinchilla's optimum of ~20
  c.min_steps = 200
  # The WSD mode of cpu_wsd.py: budgets in full FLOPs, one stable run per size, muP.
  c.mode = "wsd"
  c.accounting = "full"
  c.decay_fraction = 0.2
  c.decay_shape = "1-sqrt"
  b.model.update(parametrization="mup", base_width=256, base_head_dim=64)
  b.train.test_batches = 64
  c.fit.update(bootstrap_starts=0, bootstrap_grid="coarse")
  c.launch.job_name = "llmlab-scaling-accel"
  c.launch.slurm_options = ("--gres=gpu:1", "--cpus-per-task=8", "--time=08:00:00")
  return c
