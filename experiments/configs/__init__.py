"""Config files: each module's get_config() returns one experiment's ConfigDict.

model_section() and section() are the one place a config file lists its settings: the defaults
of ModelConfig (model/config.py) and of the train, checkpoint and sharding dataclasses
(train/settings.py), which document every field, so a config sets only what differs.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from model.config import ModelConfig


def section(cls: type, **overrides) -> ml_collections.ConfigDict:
  """A config section with every field of the dataclass cls at its default, then `overrides`
  (a name that is not a field is an error)."""
  out = ml_collections.ConfigDict(dataclasses.asdict(cls()))
  out.lock()
  for name, value in overrides.items():
    out[name] = value
  out.unlock()
  return out


def model_section(**overrides) -> ml_collections.ConfigDict:
  """The model.* section: every ModelConfig field at its default (model.moe.* from MoEConfig's),
  then `overrides`, which may be FieldReferences (the model following data.*)."""
  section = ml_collections.ConfigDict(dataclasses.asdict(ModelConfig()))  # moe: a nested dict
  section.lock()  # an override that is not a field is an error, not a new key
  for name, value in overrides.items():
    section[name] = value
  section.unlock()
  return section


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
