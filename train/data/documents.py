"""Documents from the files people have: .txt, .jsonl, .jsonl.gz, .parquet, and the default corpus.

Every format is streamed, never read whole: a .txt file is one document; a .jsonl (or gzip'd
.jsonl.gz) file holds one JSON object a line with its text in a string field; a .parquet file is
read in record batches of its text column only. The field / column is data.text_field ("text").
A line or file that cannot be read raises DataError naming the file (and the line).

Built-in corpora (no download): data.paths "" is the Python standard library of the running
interpreter (the default corpus), data.paths "stdlib:tiny" a fixed ~400 kB part of it
(STDLIB_TINY_FILES, the tiny config's corpus).

The train / validation split is by tokens, within documents (val_tokens): every file long enough
gives the last VAL_PERCENT% of its tokens to validation, as a document of its own; a short one
goes whole to one side by a hash of its key (its path). A record of a .jsonl or .parquet file
(key path:line) always goes whole: such files hold many records, often examples that must not be
cut (the retrieval and emergence studies' padded rows), and a hash over many records already
gives the share: every twentieth record of a file (at 5%), from an offset drawn by its path, so
the share of records is exact and that of tokens close to it. So the validation share of
a source's tokens is VAL_PERCENT% whatever the number and sizes of its files (a split of whole
files by hash gave 33% or 0.8% of the tokens for 20 files), and a document's split depends on it
alone: the same in every run, unchanged when other files are added.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import hashlib
import json
import math
import os
import re
import sysconfig
from typing import Iterator, Optional, Sequence

from train import files as files_lib

DataError = files_lib.DataError
VAL_PERCENT = 5  # share of every source's tokens held out for validation
FORMATS = (".txt", ".jsonl", ".jsonl.gz", ".parquet")
PARQUET_BATCH_ROWS = 1024  # rows per record batch read from a .parquet file


@dataclasses.dataclass(frozen=True)
class Document:
  key: str  # stable identity (path, or path:line), hashed for the train/validation split
  text: str


def key_unit(key: str) -> float:
  """A number in [0, 1) fixed by the key (its sha1): the document's draw for the split."""
  return int(hashlib.sha1(key.encode()).hexdigest()[:13], 16) / 16**13


_RECORD_KEY = re.compile(r"\.(jsonl|jsonl\.gz|parquet):(\d+)$")


def is_record(key: str) -> bool:
  """Whether a document key names a record of a .jsonl / .parquet file (path:line), which
  val_tokens never cuts, rather than a whole file."""
  return _RECORD_KEY.search(key) is not None


def val_tokens(key: str, n_tokens: int, n_special: int) -> int:
  """How many of a document's last tokens go to validation, as a document of their own.

  n_tokens: the document's tokens; n_special: the tokens a shard adds to every stored document
  (end-of-text, and the BOS of a tokenizer that starts texts with one). A document whose tail
  would hold at least one token gives v = p(n + 2s) - s of them (p = VAL_PERCENT / 100), so its
  validation piece, specials included, is p of all it stores; v is rounded down or up by the
  key's draw, so the shares average exactly. A record (is_record) or a shorter document goes whole to validation when its
  draw is below p (0 or n_tokens): a tail of no token would still cost its specials.
  """
  p = VAL_PERCENT / 100
  u = key_unit(key)
  exact = p * (n_tokens + 2 * n_special) - n_special
  record = _RECORD_KEY.search(key)
  if record:  # every (1/p)-th record of its file, from an offset its path draws: p of them
    line, u0 = int(record.group(2)), key_unit(key[:record.start()])
    return n_tokens if math.floor(line * p + u0) != math.floor((line - 1) * p + u0) else 0
  if exact >= 1 and n_tokens >= 2:
    return min(n_tokens - 1, int(exact + u))
  return n_tokens if u < p else 0


def stdlib_root() -> str:
  return sysconfig.get_paths()["stdlib"]


# data.paths (or a source's paths) naming the tiny built-in corpus: STDLIB_TINY_FILES of this
# interpreter's standard library. experiments/configs/tiny.py trains on it: it prepares in about a
# second, where the whole library (32 MB, data.paths "") takes half a minute.
STDLIB_TINY = "stdlib:tiny"
# Modules present in every CPython since 3.11, chosen by hand for plain, varied Python (no test
# files, no generated tables); paths relative to the standard library's root, sorted.
STDLIB_TINY_FILES = (
    "abc.py", "bisect.py", "calendar.py", "colorsys.py", "contextlib.py", "copy.py", "csv.py",
    "fnmatch.py", "fractions.py", "functools.py", "glob.py", "graphlib.py", "heapq.py",
    "json/__init__.py", "json/decoder.py", "json/encoder.py", "json/scanner.py", "linecache.py",
    "numbers.py", "operator.py", "pprint.py", "queue.py", "random.py", "reprlib.py", "sched.py",
    "shlex.py", "string.py", "textwrap.py",
)
# The most bytes the tiny corpus may hold (tests/test_data.py checks it on the running
# interpreter): the point of it is a first run that prepares its data in about a second.
STDLIB_TINY_MAX_BYTES = 512 * 1024


def builtin_corpus(patterns: Sequence[str], setting: str = "data.paths") -> str:
  """The built-in corpus a source's patterns name: "stdlib" for none (the whole standard
  library), STDLIB_TINY for that name alone, "" for files and globs. DataError naming `setting`
  when STDLIB_TINY is listed beside other paths (a mixture gives each its own data.sources entry)."""
  if not patterns:
    return "stdlib"
  if STDLIB_TINY not in patterns:
    return ""
  if len(patterns) > 1:
    raise DataError(f"{setting}: {STDLIB_TINY!r} names a built-in corpus and stands alone; mix it "
                    "with other files as its own entry of data.sources")
  return STDLIB_TINY


def builtin_files(name: str) -> list[str]:
  """The files of the built-in corpus `name` (builtin_corpus), sorted."""
  if name == "stdlib":
    return stdlib_files()
  root = stdlib_root()
  files = [os.path.join(root, f) for f in STDLIB_TINY_FILES]
  for path in files:
    if not os.path.isfile(path):
      raise DataError(f"data.paths={STDLIB_TINY!r}: {path} is missing from this interpreter's "
                      "standard library; name your own files in data.paths")
  return files


def stdlib_files() -> list[str]:
  """The .py files of this interpreter's standard library, site-packages excluded, sorted."""
  out = []
  for dirpath, dirnames, filenames in os.walk(stdlib_root()):
    dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "__pycache__"))
    out.extend(os.path.join(dirpath, f) for f in filenames if f.endswith(".py"))
  return sorted(out)


def parse_paths(paths) -> list[str]:
  """data.paths as a list of globs: accepts a comma-separated string or a sequence."""
  if isinstance(paths, str):
    paths = paths.split(",")
  return [p.strip() for p in paths if p and p.strip()]


def expand(pattern: str) -> list[str]:
  """The paths a data.paths entry names, sorted. A path that exists is taken as it is, even when
  it holds glob characters (`runs[1].txt`); otherwise it is a glob, whose leading folders are
  taken literally when they exist (`data[2024]/*.jsonl` globs inside the folder `data[2024]`)."""
  path = os.path.expanduser(pattern)
  if os.path.exists(path):
    return [path]
  head = os.path.dirname(path)
  while head and not os.path.isdir(head) and head != os.path.dirname(head):
    head = os.path.dirname(head)
  if head and os.path.isdir(head):
    path = glob.escape(head) + path[len(head):]
  return sorted(glob.glob(path, recursive=True))


def resolve_files(patterns: Sequence[str], setting: str = "data.paths") -> list[str]:
  """The files the globs match, each checked to exist, be readable and be of a known format.
  setting: the config field the patterns come from, named in every error."""
  out = []
  for pattern in patterns:
    matched = [m for m in expand(pattern) if os.path.isfile(m)]
    if not matched and os.path.isdir(os.path.expanduser(pattern)):
      raise DataError(f"{setting}: {pattern!r} is a folder; name its files, e.g. "
                      f"{os.path.join(pattern, '*.txt')!r}")
    if not matched:
      raise DataError(f"{setting}: {pattern!r} matches no file")
    for m in matched:
      if not m.endswith(FORMATS):
        raise DataError(
            f"{setting}: {m!r} is not .txt (one document), .jsonl / .jsonl.gz (a text field per "
            "line) or .parquet (a text column)")
      _check_readable(m, setting)
    out.extend(matched)
  if out and not any(os.path.getsize(f) for f in out):
    raise DataError(f"{setting}: every file it names is empty ({', '.join(patterns)}); add text "
                    "or drop the source")
  return out


def _check_readable(path: str, setting: str) -> None:
  """Opens the file and reads its first bytes (a parquet file: its footer), so an unreadable file
  is named before anything compiles rather than halfway through tokenizing."""
  try:
    if path.endswith(".parquet"):
      import pyarrow.parquet as pq

      pq.ParquetFile(path)
    else:
      with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        f.read(1)
  except Exception as e:  # noqa: BLE001 - OSError, gzip.BadGzipFile, pyarrow's errors
    why = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise DataError(f"{setting}: {path!r} cannot be read ({why}); fix the file or drop it") from None


def _jsonl_lines(path: str) -> Iterator[tuple[int, str]]:
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
      yield from enumerate(f, start=1)
  except (OSError, EOFError) as e:  # a truncated or not-gzip .gz file
    raise DataError(f"{path}: cannot be read ({e}); fix the file or drop it from data.paths") from None


def _jsonl_documents(path: str, key: str, field: str) -> Iterator[Document]:
  for lineno, line in _jsonl_lines(path):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(
          f"{path}:{lineno}: not valid JSON ({e.msg}); fix the file or drop it from data.paths"
      ) from None
    if not isinstance(record, dict) or not isinstance(record.get(field), str):
      raise DataError(f"{path}:{lineno}: line has no string field {field!r}; fix the file, drop it "
                      "from data.paths or set data.text_field")
    yield Document(f"{key}:{lineno}", record[field])


def _parquet_documents(path: str, key: str, column: str) -> Iterator[Document]:
  import pyarrow.parquet as pq  # only where parquet is read: importing pyarrow takes a while

  try:
    pf = pq.ParquetFile(path)
  except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
    raise DataError(
        f"{path}: not a readable parquet file ({e}); fix it or drop it from data.paths") from None
  if column not in pf.schema_arrow.names:
    raise DataError(f"{path}: no column {column!r} (columns: {', '.join(pf.schema_arrow.names)}); "
                    "set data.text_field")
  row = 0
  for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[column]):
    for text in batch.column(0).to_pylist():
      row += 1
      if text is not None and not isinstance(text, str):
        raise DataError(f"{path}: row {row} of column {column!r} is not a string; set data.text_field")
      yield Document(f"{key}:{row}", text or "")


def read_documents(files: Sequence[str], relative_to: Optional[str] = None,
                   text_field: str = "text") -> Iterator[Document]:
  """Documents from each file in turn, streamed (see the module docstring for the formats)."""
  for path in files:
    key = os.path.relpath(path, relative_to) if relative_to else path
    if path.endswith((".jsonl", ".jsonl.gz")):
      yield from _jsonl_documents(path, key, text_field)
    elif path.endswith(".parquet"):
      yield from _parquet_documents(path, key, text_field)
    else:
      try:
        with open(path, encoding="utf-8", errors="replace") as f:
          text = f.read()
      except OSError as e:
        raise DataError(
            f"{path}: cannot be read ({e.strerror}); fix it or drop it from data.paths") from None
      yield Document(key, text)
