"""Frozen config dataclasses from mappings (config files, a checkpoint's config.json), one check.

A key that names no field is an error that names the config's section and the keys it allows,
rather than a TypeError from the constructor, or a setting silently ignored.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


def from_dict(cls: type, d: Mapping[str, Any], section: str) -> Any:
  """cls(**d) for a dataclass cls; section ("model", "model.moe") names it in the error."""
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - names)
  if unknown:
    raise ValueError(f"unknown {section} setting(s) {unknown}; allowed: {sorted(names)}")
  return cls(**d)
