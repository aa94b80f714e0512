"""Validation of the experiment config tree (ml_collections), once, before anything compiles.

The config tree: model.* (ModelConfig fields), data.{paths, sources, text_field, prepared, seq_len,
vocab_size},
train.{steps, batch_size, lr, warmup_steps, weight_decay, grad_clip, grad_accum, seed, log_every,
eval_every, eval_batches}, checkpoint.{every_steps, keep, restart_if_unreadable}, sharding.{mesh}.
"""

from __future__ import annotations

import json
import os

import ml_collections

from model.config import ModelConfig
from train import files


class ConfigError(ValueError):
  """A setting that cannot work; the message names it."""


def validate(config: ml_collections.ConfigDict) -> ModelConfig:
  """Checks every setting; returns the ModelConfig. Raises ConfigError or ValueError."""
  for name in ("model", "data", "train", "checkpoint"):
    if name not in config:
      raise ConfigError(f"config has no section {name!r}")
  t, d, c = config.train, config.data, config.checkpoint
  model_cfg = ModelConfig.from_dict(config.model.to_dict())
  for name in ("steps", "batch_size", "lr", "grad_clip", "grad_accum", "log_every", "eval_every",
               "eval_batches"):
    if not t[name] > 0:
      raise ConfigError(f"train.{name} must be positive, got {t[name]!r}")
  if t.warmup_steps < 0 or t.weight_decay < 0:
    raise ConfigError("train.warmup_steps and train.weight_decay must be >= 0")
  if t.batch_size % t.grad_accum:
    raise ConfigError(
        f"train.batch_size={t.batch_size} must be divisible by train.grad_accum={t.grad_accum}")
  for name in ("seq_len", "vocab_size"):
    if not d[name] > 0:
      raise ConfigError(f"data.{name} must be positive, got {d[name]!r}")
  _check_sources(d.get("sources", None) or [])
  if d.seq_len > model_cfg.max_seq_len:
    raise ConfigError(
        f"data.seq_len={d.seq_len} exceeds model.max_seq_len={model_cfg.max_seq_len}; "
        "lower one or raise the other")
  if d.vocab_size > model_cfg.vocab_size:
    raise ConfigError(
        f"data.vocab_size={d.vocab_size} exceeds model.vocab_size={model_cfg.vocab_size}")
  for name in ("every_steps", "keep"):
    if not c[name] > 0:
      raise ConfigError(f"checkpoint.{name} must be positive, got {c[name]!r}")
  return model_cfg


def _check_sources(sources) -> None:
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
    w = s.get("weight", 1.0)
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
      raise ConfigError(f"data.sources[{i}].weight={w!r} must be a positive number")


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
