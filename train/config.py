"""Validation of the experiment config tree (ml_collections), once, before anything compiles.

The config tree: model.* (ModelConfig fields), data.{paths, sources, text_field, prepared, seq_len,
vocab_size},
train.{steps, batch_size, lr, warmup_steps, weight_decay, grad_clip, grad_accum, seed, log_every,
eval_every, eval_batches}, checkpoint.{every_steps, keep, restart_if_unreadable},
sharding.{mesh, zero_stage, device_memory_gb}: each section a frozen dataclass of train/settings.py,
built once here.
"""

from __future__ import annotations

import json
import os

import ml_collections

from model.config import ModelConfig
from train import files
from train import settings as settings_lib


ConfigError = settings_lib.ConfigError  # re-exported: callers and tests catch config.ConfigError


def settings(config: ml_collections.ConfigDict) -> settings_lib.RunSettings:
  """Checks every setting once; returns the run's typed sections. Raises ConfigError or
  ValueError (MeshError for sharding.*) in one line naming the setting."""
  for name in ("model", "data", "train", "checkpoint"):
    if name not in config:
      raise ConfigError(f"config has no section {name!r}")
  model_cfg = ModelConfig.from_dict(config.model.to_dict())
  train = settings_lib.TrainSettings.from_config(config.train)
  if train.batch_size % train.grad_accum:
    raise ConfigError(
        f"train.batch_size={train.batch_size} must be divisible by "
        f"train.grad_accum={train.grad_accum}")
  data = settings_lib.DataSettings.from_config(config.data)
  if data.seq_len > model_cfg.max_seq_len:
    raise ConfigError(
        f"data.seq_len={data.seq_len} exceeds model.max_seq_len={model_cfg.max_seq_len}; "
        "lower one or raise the other")
  if data.vocab_size > model_cfg.vocab_size:
    raise ConfigError(
        f"data.vocab_size={data.vocab_size} exceeds model.vocab_size={model_cfg.vocab_size}")
  checkpoint = settings_lib.CheckpointSettings.from_config(config.checkpoint)
  # A config without a sharding section runs on every device, replicated (the defaults).
  sharding = settings_lib.ShardingSettings.from_config(
      config.sharding if "sharding" in config else {})
  return settings_lib.RunSettings(model=model_cfg, data=data, train=train, checkpoint=checkpoint,
                                  sharding=sharding)


def validate(config: ml_collections.ConfigDict) -> ModelConfig:
  """Checks every setting (see settings); returns the ModelConfig."""
  return settings(config).model


# Settings that fix the shape of a run's saved state and data: a workdir trained with one value
# cannot resume with another.
FROZEN_KEYS = ("model", "data.seq_len", "data.vocab_size")


def _lookup(d: dict, dotted: str):
  for part in dotted.split("."):
    d = d[part]
  return d


def check_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Refuses to resume a workdir whose saved config has another model or data shape."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    saved = json.load(f)
  new = json.loads(config.to_json())
  # The model as ModelConfig resolves it, defaults filled in: a workdir saved before a field
  # existed (or by a config that left it out) resumes when the field is at its default.
  saved["model"], new["model"] = (
      json.loads(json.dumps(ModelConfig.from_dict(m).to_dict())) for m in (saved["model"], new["model"]))
  diffs = []
  for key in FROZEN_KEYS:
    old_v, new_v = _lookup(saved, key), _lookup(new, key)
    if isinstance(old_v, dict):
      diffs += [f"{key}.{k}: saved {old_v.get(k)!r}, requested {new_v.get(k)!r}"
                for k in sorted(set(old_v) | set(new_v)) if old_v.get(k) != new_v.get(k)]
    elif old_v != new_v:
      diffs.append(f"{key}: saved {old_v!r}, requested {new_v!r}")
  if diffs:
    raise ConfigError(
        f"workdir {workdir} was trained with another shape ({'; '.join(diffs)}); "
        "use a new --workdir or the saved settings")


def save(workdir: str, config: ml_collections.ConfigDict) -> None:
  files.write_atomic(os.path.join(workdir, "config.json"), config.to_json(indent=2))
