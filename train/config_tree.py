"""The resolved config as its leaves, each with its value and where the value came from.

`--print_config` (train/cli.py; every script with a config flag) prints render(): one line a
field, `KEY = VALUE  [ORIGIN]`, where ORIGIN is
  flag         set on the command line (--config.KEY=VALUE, or a --config.KEY above it),
  default      equal to the field's built-in default: the dataclass of its section in
               train/config.py, or ModelConfig for model.*,
  config file  anything else: the config file chose it (every field of a section that has no
               dataclass, such as a study's own section, is the config file's).
A config file that sets a field to its default therefore shows it as `default`: the origin says
whether the value differs from llmlab's default, not which line wrote it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from model.config import ModelConfig
from train import config as config_lib

FLAG, DEFAULT, FILE = "flag", "default", "config file"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested mappings as {"a.b.c": leaf}; lists and tuples are leaves."""
  out: dict[str, Any] = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def section_classes(config: Mapping[str, Any]) -> dict[str, type]:
  """Section name -> the dataclass that holds its defaults: an alignment stage's sections when
  the config has a stage section (sft, dpo or grpo), pretraining's otherwise. Both have model.*
  (an alignment stage's fresh model, used without --init_workdir)."""
  stage = next((name for name in config_lib.STAGE_SECTIONS if name in config), None)
  common = {"model": ModelConfig, "train": config_lib.TrainSettings, "checkpoint": config_lib.CheckpointSettings,
            "sharding": config_lib.ShardingSettings}
  if stage is None:
    return {"data": config_lib.DataSettings, **common}
  return {"task": config_lib.TaskSettings, "data": config_lib.StageDataSettings,
          "eval": config_lib.EvalSettings, stage: config_lib.STAGE_SECTIONS[stage], **common}


def defaults(config: Mapping[str, Any]) -> dict[str, Any]:
  """{"section.field": default} over the config's sections that have a dataclass."""
  out: dict[str, Any] = {}
  for name, cls in section_classes(config).items():
    out.update(flatten(dataclasses.asdict(cls()), f"{name}."))
  return out


def _same(a: Any, b: Any) -> bool:
  """Equal as config values: a tuple default equals the list a config holds; True is not 1."""
  if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
  if isinstance(a, bool) or isinstance(b, bool):
    return a is b
  return a == b


def leaves(config: Any, overrides: Sequence[str]) -> list[tuple[str, Any, str]]:
  """(key, value, origin) for every leaf of `config` (a ConfigDict or a dict), sorted by key.
  overrides: the dotted keys the command line set (--config.train.steps=7 -> "train.steps"); a
  key names its leaf or every leaf below it."""
  tree = config.to_dict() if hasattr(config, "to_dict") else dict(config)  # references resolved
  known = defaults(tree)
  out = []
  for key, value in sorted(flatten(tree).items()):
    if any(key == o or key.startswith(o + ".") for o in overrides):
      origin = FLAG
    elif key in known and _same(value, known[key]):
      origin = DEFAULT
    else:
      origin = FILE
    out.append((key, value, origin))
  return out


def render(config: Any, overrides: Sequence[str]) -> str:
  """leaves() as aligned lines `KEY = VALUE  [ORIGIN]`."""
  rows = [(key, repr(value), origin) for key, value, origin in leaves(config, overrides)]
  key_width = max((len(k) for k, _, _ in rows), default=0)
  value_width = max((len(v) for _, v, _ in rows), default=0)
  return "\n".join(f"{k:<{key_width}} = {v:<{value_width}}  [{o}]" for k, v, o in rows)
