"""The experiment config: its typed sections, and the one place a ConfigDict becomes them.

Config files and the command line are ml_collections ConfigDicts with the sections model.*
(ModelConfig, model/config.py), data.*, train.*, checkpoint.* and sharding.* (the frozen
dataclasses below). resolve() checks a pretraining config once and returns RunSettings; the
alignment stages build the same sections (train/align/stage.py check_common), so every run reads
typed fields, never `section.get(name, default)`. A field's default is the one place a missing
setting is filled in: a config that leaves it out, or the config.json of a workdir saved before the
field existed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Optional

import ml_collections

from model import fields
from model.config import ModelConfig
from sharding import mesh as mesh_lib
from train import files


class ConfigError(ValueError):
  """A setting that cannot work; the message names it."""


def _as_dict(section: Any) -> dict:
  """A ConfigDict (FieldReferences resolved) or a mapping as a plain dict."""
  return section.to_dict() if hasattr(section, "to_dict") else dict(section)


def _known(cls: type, d: Mapping[str, Any]) -> dict:
  names = {f.name for f in dataclasses.fields(cls)}
  return {k: v for k, v in d.items() if k in names}


def _from_section(cls: type, section: Any, name: str, strict: bool) -> Any:
  """cls from a config section; strict=False drops keys that are not fields (a saved
  config.json, written by a version with other settings, is a record, not a user's typo)."""
  d = _as_dict(section)
  return fields.from_dict(cls, d if strict else _known(cls, d), name)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  """train.*: pretraining and the alignment stages share the section (an alignment config has no
  eval_batches: its evaluation is exact match, so the default stays unused there)."""

  steps: int = 400
  batch_size: int = 16
  lr: float = 3e-3
  warmup_steps: int = 50
  weight_decay: float = 0.1
  grad_clip: float = 1.0
  grad_accum: int = 1  # micro-batches per step; the update equals the whole batch's
  seed: int = 0
  log_every: int = 10
  eval_every: int = 80
  eval_batches: int = 8
  # Pretraining only: where set (a text that is one token, e.g. " ?"), the loss counts only the
  # answers of questions "MARKER KEY" -> VALUE, the target one after the token that follows each
  # marker (train/step.py answer_targets); "" = every token.
  answer_marker: str = ""

  def __post_init__(self):
    for name in ("steps", "batch_size", "lr", "grad_clip", "grad_accum", "log_every", "eval_every",
                 "eval_batches"):
      if not getattr(self, name) > 0:
        raise ConfigError(f"train.{name} must be positive, got {getattr(self, name)!r}")
    if self.warmup_steps < 0 or self.weight_decay < 0:
      raise ConfigError("train.warmup_steps and train.weight_decay must be >= 0")

  @classmethod
  def from_config(cls, section: Any, *, strict: bool = True) -> "TrainSettings":
    return _from_section(cls, section, "train", strict)


@dataclasses.dataclass(frozen=True)
class CheckpointSettings:
  """checkpoint.*: how often to save, how many to keep, and whether a run whose checkpoints are
  all unreadable starts over (False: it stops with an error)."""

  every_steps: int = 80
  keep: int = 3
  restart_if_unreadable: bool = False

  def __post_init__(self):
    for name in ("every_steps", "keep"):
      if not getattr(self, name) > 0:
        raise ConfigError(f"checkpoint.{name} must be positive, got {getattr(self, name)!r}")

  @classmethod
  def from_config(cls, section: Any, *, strict: bool = True) -> "CheckpointSettings":
    return _from_section(cls, section, "checkpoint", strict)


@dataclasses.dataclass(frozen=True)
class ShardingSettings:
  """sharding.*: the mesh's axis sizes, the ZeRO stage, and the memory per device in GB that the
  compiled step is checked against before the first step (0 = no check)."""

  # Axis sizes of the device mesh (data, fsdp, tensor, expert); one -1 takes the remaining devices.
  mesh: dict = dataclasses.field(default_factory=lambda: {"data": -1})
  # ZeRO over the data-parallel devices: 0 replicated, 1 optimizer state partitioned, 2 gradients
  # too, 3 parameters too (FSDP). Any stage resumes any other's checkpoint.
  zero_stage: int = 0
  # Memory per device in GB (an H100: 80). Before the first step the compiled step's peak is
  # checked against it, and a run that does not fit stops naming the lowest ZeRO stage that would.
  device_memory_gb: float = 0.0

  def __post_init__(self):
    object.__setattr__(self, "mesh", _as_dict(self.mesh))
    budget = self.device_memory_gb
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget < 0:
      raise mesh_lib.MeshError(
          f"sharding.device_memory_gb={budget!r} must be a number of GB per device (0 = no check)")

  @classmethod
  def from_config(cls, section: Any, *, strict: bool = True) -> "ShardingSettings":
    return _from_section(cls, section, "sharding", strict)


def check_sources(sources: Any) -> None:
  """data.sources: a list of {"paths": globs, "weight": > 0}; the files are checked later, by
  train/data.check_sources (still before anything compiles)."""
  if isinstance(sources, (str, dict)) or not hasattr(sources, "__len__"):
    raise ConfigError(f"data.sources must be a list of {{'paths': ..., 'weight': ...}}, got {sources!r}")
  for i, s in enumerate(sources):
    if not hasattr(s, "get") or not s.get("paths"):
      raise ConfigError(f"data.sources[{i}] must be a dict with non-empty 'paths', got {s!r}")
    extra = sorted(set(s.keys()) - {"paths", "weight"})
    if extra:
      raise ConfigError(f"data.sources[{i}] has unknown keys {extra}; a source has 'paths' and 'weight'")
    w = s.get("weight", 1.0)  # a source's own record: weight 1 unless it says otherwise
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
      raise ConfigError(f"data.sources[{i}].weight={w!r} must be a positive number")


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """data.*: the text, where its shards live, and the shape of a row (train/data/pipeline.py reads it)."""

  paths: Any = ""  # comma-separated globs, or a list; "" = the standard library
  sources: tuple = ()  # ({"paths": ..., "weight": ...}, ...); () = the one source data.paths
  text_field: str = "text"  # the field of a .jsonl line, the column of a .parquet file
  prepared: str = ""  # the shard folder; "" = <workdir>/data
  vocab_size: int = 2048
  seq_len: int = 256
  # A workdir imported by experiments.convert records its tokenizer's special tokens here (the
  # ones playing end-of-text, padding and start of text; None: none added). The tokenizer's own
  # roles file is what is read; these keep its config.json a valid config to train on.
  eot_token: Optional[str] = None
  pad_token: Optional[str] = None
  bos_token: Optional[str] = None

  def __post_init__(self):
    # None from a command line or an old config.json means the default.
    object.__setattr__(self, "sources", tuple(self.sources or ()))
    object.__setattr__(self, "text_field", self.text_field or "text")
    object.__setattr__(self, "prepared", self.prepared or "")
    for name in ("seq_len", "vocab_size"):
      if not getattr(self, name) > 0:
        raise ConfigError(f"data.{name} must be positive, got {getattr(self, name)!r}")
    check_sources(self.sources)

  @classmethod
  def from_config(cls, section: Any, *, strict: bool = True) -> "DataSettings":
    return _from_section(cls, section, "data", strict)

  @staticmethod
  def of(data_cfg: Any) -> "DataSettings":
    """From a data section that may hold settings of its own beside these (a study's)."""
    return DataSettings.from_config(data_cfg, strict=False)


@dataclasses.dataclass(frozen=True)
class RunSettings:
  """A pretraining run's validated sections, built once by resolve()."""

  model: ModelConfig
  data: DataSettings
  train: TrainSettings
  checkpoint: CheckpointSettings
  sharding: ShardingSettings


def resolve(config: ml_collections.ConfigDict) -> RunSettings:
  """Checks every setting once; returns the run's typed sections. Raises ConfigError or
  ValueError (MeshError for sharding.*) in one line naming the setting."""
  for name in ("model", "data", "train", "checkpoint"):
    if name not in config:
      raise ConfigError(f"config has no section {name!r}")
  model_cfg = ModelConfig.from_dict(config.model.to_dict())
  train_settings = TrainSettings.from_config(config.train)
  if train_settings.batch_size % train_settings.grad_accum:
    raise ConfigError(
        f"train.batch_size={train_settings.batch_size} must be divisible by "
        f"train.grad_accum={train_settings.grad_accum}")
  data_settings = DataSettings.from_config(config.data)
  if data_settings.seq_len > model_cfg.max_seq_len:
    raise ConfigError(
        f"data.seq_len={data_settings.seq_len} exceeds "
        f"model.max_seq_len={model_cfg.max_seq_len}; "
        "lower one or raise the other")
  if data_settings.vocab_size > model_cfg.vocab_size:
    raise ConfigError(
        f"data.vocab_size={data_settings.vocab_size} exceeds "
        f"model.vocab_size={model_cfg.vocab_size}")
  checkpoint_settings = CheckpointSettings.from_config(config.checkpoint)
  # A config without a sharding section runs on every device, replicated (the defaults).
  sharding_settings = ShardingSettings.from_config(
      config.sharding if "sharding" in config else {})
  return RunSettings(model=model_cfg, data=data_settings, train=train_settings,
                     checkpoint=checkpoint_settings, sharding=sharding_settings)


def validate(config: ml_collections.ConfigDict) -> ModelConfig:
  """Checks every setting (see resolve); returns the ModelConfig."""
  return resolve(config).model


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
