"""A Chinchilla-style sweep for one accelerator per point (TPU or GPU): 3.4M to 218M non-embedding
parameters, budgets from 1e16 to 1e18 FLOPs, 30 runs and 1.3e19 FLOPs in all (about 9 H100-hours
at 40% MFU, spread over the cluster by the job array). The CPU sweep's command with only flags
changed:

  python -m experiments.scaling --sweep=experiments/configs/sweeps/accelerator.py \
      --sweep.base.data.paths='/data/corpus/*.jsonl' --workdir=/scratch/scaling --launcher=slurm

Point it at a corpus of a few billion tokens (the standard-library default has ~10^7 tokens,
which the larger budgets would repeat hundreds of times). Not run in this repository's CI or
on its development machine: the numbers above are estimates from flops_per_token.
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
  c.launch.job_name = "llmlab-scaling-accel"
  c.launch.slurm_options = ("--gres=gpu:1", "--cpus-per-task=8", "--time=08:00:00")
  return c
