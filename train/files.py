"""Atomic file writes: a crash leaves either the old file or the new one, never half of one.

Written to PATH.tmp and renamed over PATH; os.replace is atomic on POSIX. Lives in train/
because model/ and sharding/ never write files; train/ and experiments/ both import it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Union


def write_atomic(path: str, data: Union[str, bytes]) -> None:
  """Writes text (UTF-8) or bytes to PATH atomically."""
  tmp = path + ".tmp"
  if isinstance(data, bytes):
    with open(tmp, "wb") as f:
      f.write(data)
  else:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(data)
  os.replace(tmp, path)


def write_json_atomic(path: str, obj: Any, **json_kwargs: Any) -> None:
  """json.dump(obj, **json_kwargs) to PATH atomically; callers pass their own indent/default so
  each file keeps its bytes."""
  write_atomic(path, json.dumps(obj, **json_kwargs))


def write_jsonl_atomic(path: str, rows: Iterable[Any], **json_kwargs: Any) -> None:
  """One JSON object a line, each line ending in a newline, to PATH atomically."""
  write_atomic(path, "".join(json.dumps(row, **json_kwargs) + "\n" for row in rows))
