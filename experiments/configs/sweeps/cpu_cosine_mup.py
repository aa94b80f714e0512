"""The WSD study's points trained from scratch, one cosine schedule each: the side-by-side that
prices the WSD sweep (experiments/configs/sweeps/cpu_wsd.py: same models, muP learning rate,
full-FLOP budgets and test split), and the ablation's row of per-size (muP) learning rates
without WSD.

  python -m experiments.scaling --sweep=experiments/configs/sweeps/cpu_cosine_mup.py \
      --workdir=runs/scaling_cosine_mup --results_dir=results/scaling_cosine_mup \
      [--sweep.budgets='(3e11, 1e12)']   # a few columns only: what this session ran
"""

import ml_collections

from experiments.configs.sweeps import cpu_wsd


def get_config() -> ml_collections.ConfigDict:
  c = cpu_wsd.get_config()
  c.mode = "cosine"
  c.launch.job_name = "llmlab-scaling-cosine-mup"
  return c
