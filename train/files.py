"""The project's files: atomic writes, and JSONL reads whose errors name path:line.

Writes go to PATH.tmp, renamed over PATH (os.replace is atomic on POSIX), so a crash leaves either
the old file or the new one, never half of one. Lives in train/ because model/ and sharding/
never touch files; train/ and experiments/ both import it, and it imports nothing heavy, so
train/metrics.py can read its log without the data pipeline.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Iterator, Union


class DataError(ValueError):
  """A data file or data setting that cannot be used; the message names it (and the setting to
  change, where there is one). train.data.pipeline and train.align.data re-export it."""


def iter_jsonl(path: str, *, bad_line: str = "not valid JSON ({msg})",
               torn_tail_ok: bool = False) -> Iterator[tuple[int, Any]]:
  """(line number from 1, parsed value) for each non-blank line of a JSONL file.

  A line that is not JSON raises DataError "PATH:LINE: " + bad_line.format(msg=...). With
  torn_tail_ok, such a line is skipped when no non-blank line follows it: a writer killed
  mid-record (kill -9, preemption) leaves exactly one torn line, at the end.
  """
  torn = None  # the error of a bad line, raised only if another record follows it
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, start=1):
      if not line.strip():
        continue
      if torn is not None:
        raise torn
      try:
        value = json.loads(line)
      except json.JSONDecodeError as e:
        error = DataError(f"{path}:{n}: " + bad_line.format(msg=e.msg))
        if not torn_tail_ok:
          raise error from None
        torn = error
        continue
      yield n, value


def write_atomic(path: str, data: Union[str, bytes]) -> None:
  """Writes text (UTF-8) or bytes to PATH atomically. A write that fails (a full disk, a file
  size limit, no permission) leaves no PATH.tmp behind and raises OSError naming PATH."""
  tmp = path + ".tmp"
  try:
    if isinstance(data, bytes):
      with open(tmp, "wb") as f:
        f.write(data)
    else:
      with open(tmp, "w", encoding="utf-8") as f:
        f.write(data)
    os.replace(tmp, path)
  except OSError as e:
    remove_quietly(tmp)
    raise with_path(e, path) from None
  except BaseException:
    remove_quietly(tmp)
    raise


def remove_quietly(path: str) -> None:
  """Deletes a file if it is there; a failure to delete is not worth a second error."""
  try:
    os.remove(path)
  except OSError:
    pass


def with_path(error: OSError, path: str) -> OSError:
  """error, naming `path` when it names no file (a failed write() names none): the one-line
  message the scripts print (train/cli.py) then says where the disk was full."""
  if error.filename is not None and error.filename != path + ".tmp":
    return error
  return OSError(error.errno, error.strerror or str(error), path)


def write_json_atomic(path: str, obj: Any, **json_kwargs: Any) -> None:
  """json.dump(obj, **json_kwargs) to PATH atomically; callers pass their own indent/default so
  each file keeps its bytes."""
  write_atomic(path, json.dumps(obj, **json_kwargs))


def write_jsonl_atomic(path: str, rows: Iterable[Any], **json_kwargs: Any) -> None:
  """One JSON object a line, each line ending in a newline, to PATH atomically."""
  write_atomic(path, "".join(json.dumps(row, **json_kwargs) + "\n" for row in rows))
