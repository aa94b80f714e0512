"""Config files: each module's get_config() returns one experiment's ConfigDict.

A config file builds each section of a training run with train/config.py's section(cls,
**overrides): every field at the default of its dataclass (ModelConfig in model/config.py; the
data, train, checkpoint, sharding and alignment sections in train/config.py, which document every
field), so a config states only what differs, and why.
"""

from __future__ import annotations

import ml_collections


def shrink_to_smoke_test(run: ml_collections.ConfigDict) -> None:
  """Makes a study's training config (its `base`) a two-step run on a tiny vocabulary: the
  `tiny` presets that the studies' tests run."""
  run.data.vocab_size = 300
  run.train.update(steps=2, batch_size=8, warmup_steps=1, eval_batches=1)
  run.checkpoint.every_steps = 2


def launch_section(job_name: str, time_limit: str) -> ml_collections.ConfigDict:
  """launch.*: a study's Slurm job array (train/studies/sweep.py), one task per run on 2 CPUs for
  at most time_limit ("HH:MM:SS")."""
  return ml_collections.ConfigDict(
      {"job_name": job_name, "slurm_options": ("--cpus-per-task=2", f"--time={time_limit}")})
