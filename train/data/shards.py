"""Pre-tokenized token shards: written once per source, read memory-mapped by every run.

One prepared source is a folder:

  manifest.json         written last; a folder without it was never completed
  train-00000.npy ...   the training split's token stream, cut every max_shard_tokens tokens
  val-00000.npy ...     the validation split's
  unigram_counts.npy    how often each token id occurs in the training split

A stream is every document's tokens followed by end-of-text (after the BOS an imported tokenizer
starts a text with), concatenated; a document's last tokens go to the validation stream as a
document of their own (encode_split, train/data/documents.py val_tokens); a document may run on into the next shard. Tokens are stored as
uint16 when the vocabulary fits, else uint32. The folder is built under NAME.tmp-PID and renamed
into place whole, so a killed preparation leaves nothing that looks complete.

Rows are cut when read, not when written, so one preparation serves any seq_len: row r of a shard
is tokens [r * (L+1), (r+1) * (L+1)), and each shard's last incomplete row is dropped.

Shards prove themselves before they are trusted: the manifest records each shard's size and
crc32, and each input file's size, mtime and sha256. On a shard's first use in a process
(verify_shard, memoised by path, size and mtime) its size and crc32 are checked and every token id
is range-checked against the vocabulary; before a folder is reused (check_source_files) each input
file's size and mtime are compared, and its sha256 when they differ. A mismatch is one DataError
naming the file. Manifests written before checksums existed (no "crc32" / "mtime_ns") skip those
checks; ids are still range-checked.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import mmap
import os
import shutil
import zlib
from typing import Iterable, Optional, Sequence

import numpy as np
from tokenizers import Tokenizer

from train import files as files_lib
from train.data import documents as documents_lib
from train.data import tokenizer as tokenizer_lib

# 2: the validation split is every document's tail (train/data/documents.py val_tokens); 1 held
# out whole documents by a hash of their key. Folders of another version are refused
# (check_format): their split is not the one this code makes.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
COUNTS = "unigram_counts.npy"
SPLITS = ("train", "val")
MAX_SHARD_TOKENS = 1 << 26  # 128 MiB of uint16 tokens per file
ENCODE_CHUNK_DOCS = 256  # documents per encode_batch call (tokenizers spreads one over its threads)


def tokenizer_sha256(tok: Tokenizer) -> str:
  """Identifies the token ids a tokenizer produces: its merges and vocabulary, and which tokens
  play BOS and end-of-text (they change the ids of every document)."""
  h = hashlib.sha256(tok.to_str().encode())
  h.update(json.dumps(tokenizer_lib.roles(tok), sort_keys=True).encode())
  return h.hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def file_record(path: str) -> dict:
  """An input file as the manifest records it: absolute path, size, mtime, sha256."""
  st = os.stat(path)
  return {"path": os.path.abspath(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns,
          "sha256": file_sha256(path)}


def file_crc32(path: str) -> str:
  """crc32 of the file's bytes, 8 hex digits (zlib's, over a read-only memory map)."""
  with open(path, "rb") as f:
    if not os.fstat(f.fileno()).st_size:
      return f"{zlib.crc32(b''):08x}"
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
      return f"{zlib.crc32(mm):08x}"


def encode_split(docs: Sequence[tuple[str, str]], tok: Tokenizer) -> dict[str, tuple[np.ndarray, int]]:
  """{split: (stream, pieces)} of a few (key, text) documents, int64 streams: each document's
  tokens, the last documents.val_tokens of them cut off into a validation piece; every piece is
  stored as a document of its own (its tokens, then end-of-text, after the BOS of a tokenizer
  that starts texts with one), so a validation piece starts at a document boundary and packed
  rows isolate it as they do a whole document."""
  eot = tokenizer_lib.special_id(tok, tokenizer_lib.EOT)
  bos = tokenizer_lib.start_ids(tok) if tokenizer_lib.BOS in tokenizer_lib.roles(tok) else []
  encoded = tok.encode_batch([text for _, text in docs], add_special_tokens=False)
  parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
  for (key, _), e in zip(docs, encoded):
    n_val = documents_lib.val_tokens(key, len(e.ids), len(bos) + 1)
    cut = len(e.ids) - n_val
    for split, ids in (("train", e.ids[:cut]), ("val", e.ids[cut:])):
      if ids:
        parts[split].append(np.asarray(bos + ids + [eot], np.int64))
  return {s: (np.concatenate(p) if p else np.zeros((0,), np.int64), len(p))
          for s, p in parts.items()}


def encode_chunk(texts: Sequence[str], tok: Tokenizer) -> np.ndarray:
  """The stream of a few documents: each one's tokens, then end-of-text. int64, flat."""
  eot = tokenizer_lib.special_id(tok, tokenizer_lib.EOT)
  bos = tokenizer_lib.start_ids(tok) if tokenizer_lib.BOS in tokenizer_lib.roles(tok) else []
  encoded = tok.encode_batch(list(texts), add_special_tokens=False)
  parts = [np.asarray(bos + e.ids + [eot], np.int64) for e in encoded]
  return np.concatenate(parts) if parts else np.zeros((0,), np.int64)


def save_npy(path: str, array: np.ndarray) -> None:
  """np.save's bytes, written through Python's file object: a full disk or a file size limit is
  then an OSError with its errno and PATH (np.save's tofile reports only "N requested and M
  written"). The array is handed over as a view, never copied."""
  array = np.ascontiguousarray(array)
  try:
    with open(path, "wb") as f:
      np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(array))
      f.write(memoryview(array).cast("B"))
  except OSError as e:
    raise files_lib.with_path(e, path) from None


class _SplitWriter:
  """Appends token arrays to one split, writing a shard file every max_tokens tokens."""

  def __init__(self, folder: str, split: str, dtype: np.dtype, max_tokens: int, vocab_size: int):
    self.folder, self.split, self.dtype, self.max_tokens = folder, split, dtype, max_tokens
    self.buffer: list[np.ndarray] = []
    self.buffered = 0
    self.shards: list[dict] = []
    self.counts = np.zeros((vocab_size,), np.int64)
    self.documents = 0

  def add(self, tokens: np.ndarray, n_documents: int) -> None:
    if tokens.size and (tokens.min() < 0 or tokens.max() >= len(self.counts)):
      raise ValueError(f"token id out of range [0, {len(self.counts)})")  # a tokenizer bug
    self.counts += np.bincount(tokens, minlength=len(self.counts))
    self.documents += n_documents
    self.buffer.append(tokens.astype(self.dtype))
    self.buffered += tokens.size
    while self.buffered >= self.max_tokens:
      self._write(self.max_tokens)

  def close(self) -> None:
    if self.buffered:
      self._write(self.buffered)

  def _write(self, n: int) -> None:
    stream = np.concatenate(self.buffer)
    name = f"{self.split}-{len(self.shards):05d}.npy"
    path = os.path.join(self.folder, name)
    save_npy(path, stream[:n])
    self.shards.append({"file": name, "tokens": int(n), "bytes": os.path.getsize(path),
                        "crc32": file_crc32(path)})
    rest = stream[n:]
    self.buffer, self.buffered = ([rest] if rest.size else []), int(rest.size)


def unigram_entropy(counts: np.ndarray) -> float:
  """Nats per token of the count distribution: the loss of a model that ignores context."""
  counts = np.asarray(counts, np.float64)
  p = counts[counts > 0] / max(counts.sum(), 1.0)
  return float(-(p * np.log(p)).sum())


def write_source(
    folder: str, documents: Iterable[tuple[str, str]], tok: Tokenizer, *, source: dict,
    files: Sequence[str], max_shard_tokens: int = MAX_SHARD_TOKENS,
) -> dict:
  """Tokenizes (key, text) documents into the shard folder `folder`, split by encode_split;
  returns its manifest. A split's "documents" count its pieces.

  source: what the folder was prepared from (recorded in the manifest); files: the input files,
  recorded with their sizes and sha256. A split with no documents when the other has some (a tiny
  corpus of short documents drawn entirely into validation) is swapped, so that training always
  has the text.
  """
  _remove_abandoned(folder)
  tmp = f"{folder}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    dtype = token_dtype(tok.get_vocab_size())
    writers = {s: _SplitWriter(tmp, s, dtype, max_shard_tokens, tok.get_vocab_size()) for s in SPLITS}
    pending: list[tuple[str, str]] = []

    def flush() -> None:
      for split, (tokens, pieces) in encode_split(pending, tok).items():
        writers[split].add(tokens, pieces)
      pending.clear()

    for key, text in documents:
      pending.append((key, text))
      if len(pending) == ENCODE_CHUNK_DOCS:
        flush()
    flush()
    for split in SPLITS:
      writers[split].close()
    if not writers["train"].documents:
      writers["train"], writers["val"] = writers["val"], writers["train"]
    manifest = {
        "format_version": FORMAT_VERSION,
        "tokenizer_sha256": tokenizer_sha256(tok),
        "vocab_size": tok.get_vocab_size(),
        "dtype": dtype.name,
        "source": source,
        "files": [file_record(f) for f in files],
        "splits": {s: {"documents": w.documents, "tokens": int(sum(x["tokens"] for x in w.shards)),
                       "shards": w.shards} for s, w in writers.items()},
        "unigram_entropy": unigram_entropy(writers["train"].counts),
    }
    save_npy(os.path.join(tmp, COUNTS), writers["train"].counts)
    files_lib.write_json_atomic(os.path.join(tmp, MANIFEST), manifest, indent=2)
    try:
      os.rename(tmp, folder)
    except OSError:  # another process completed the same folder first: keep its copy
      if read_manifest(folder) is None:
        raise
      shutil.rmtree(tmp, ignore_errors=True)
      return read_manifest(folder)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return manifest


def _remove_abandoned(folder: str) -> None:
  """Deletes FOLDER.tmp-PID left by a preparation that was killed (its PID is not running here)."""
  for tmp in glob.glob(glob.escape(folder) + ".tmp-*"):
    try:
      os.kill(int(tmp.rsplit("-", 1)[1]), 0)
    except ProcessLookupError:
      shutil.rmtree(tmp, ignore_errors=True)
    except (ValueError, PermissionError):  # not our name, or another user's live process
      pass


_MANIFEST_KEYS = ("tokenizer_sha256", "vocab_size", "splits", "unigram_entropy")


def _manifest_problem(manifest) -> Optional[str]:
  """What is missing from a manifest (None when nothing is): the keys every reader uses."""
  if not isinstance(manifest, dict):
    return "is not a JSON object"
  missing = [k for k in _MANIFEST_KEYS if k not in manifest]
  if missing:
    return f"lacks {', '.join(missing)}"
  for split in SPLITS:
    entry = manifest["splits"].get(split) if isinstance(manifest["splits"], dict) else None
    if not isinstance(entry, dict) or any(k not in entry for k in ("documents", "tokens", "shards")):
      return f"lacks splits.{split} (documents, tokens, shards)"
    if any(not isinstance(x, dict) or "file" not in x or "tokens" not in x
           for x in entry["shards"]):
      return f"lists a {split} shard without its file and tokens"
  return None


def read_manifest(folder: str) -> Optional[dict]:
  """The folder's manifest, or None when the folder was never completed. DataError naming the
  folder when it is not JSON or lacks a key the readers need."""
  path = os.path.join(folder, MANIFEST)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise files_lib.DataError(
        f"{path} is not valid JSON ({e}); delete {folder} to prepare it again") from None
  problem = _manifest_problem(manifest)
  if problem:
    raise files_lib.DataError(f"{path} {problem}; delete {folder} to prepare it again")
  return manifest


def check_format(folder: str, manifest: dict) -> None:
  """DataError in one line unless the folder was prepared with this code's split
  (FORMAT_VERSION): shards of the old whole-document split are not mixed into a run silently."""
  version = manifest.get("format_version", 1)
  if version != FORMAT_VERSION:
    raise files_lib.DataError(
        f"{folder} was prepared with format_version {version} (a train/validation split of whole "
        f"documents by hash), this code splits every document by tokens (version "
        f"{FORMAT_VERSION}); delete {folder} to prepare it again (a resumed run then reads other "
        "rows), or resume with the code that prepared it")


def check_source_files(folder: str, manifest: dict, files: Sequence[str]) -> None:
  """Refuses shards whose input files changed since they were prepared: a file added to or gone
  from the source, or one whose size differs, or whose mtime differs and its sha256 too (a file
  touched but not edited passes). Manifests without mtimes compare sizes only."""
  recorded = {r["path"]: r for r in manifest.get("files", [])}
  current = {os.path.abspath(f) for f in files}
  fix = f"delete {folder} to prepare it again"
  if not recorded:
    return  # a manifest without file records has nothing to compare
  added, gone = sorted(current - set(recorded)), sorted(set(recorded) - current)
  if added:
    raise files_lib.DataError(f"{added[0]} was not among the files {folder} was prepared "
                              f"from; {fix}")
  if gone:
    raise files_lib.DataError(f"{gone[0]}, which {folder} was prepared from, is no longer a "
                              f"source file; {fix}")
  for path in sorted(current):
    r, st = recorded[path], os.stat(path)
    changed = st.st_size != r.get("bytes", st.st_size)
    if not changed and "mtime_ns" in r and st.st_mtime_ns != r["mtime_ns"]:
      changed = "sha256" in r and file_sha256(path) != r["sha256"]
    if changed:
      raise files_lib.DataError(
          f"{path} changed since {folder} was prepared from it (size {r.get('bytes')} -> "
          f"{st.st_size} bytes); {fix}, or restore the file")


def unigram_counts(folder: str) -> np.ndarray:
  path = os.path.join(folder, COUNTS)
  if not os.path.exists(path):
    raise files_lib.DataError(f"{path} is missing; delete {folder} to prepare it again")
  return np.load(path)


# Linux maps the pages around a page fault too (fault-around, 64 KiB): the window to unmap.
_FAULT_WINDOW = 1 << 16


def _unmap(tokens: np.ndarray, lo: int, hi: int) -> None:
  """Drops this process's mapping of the pages around tokens[lo:hi] (madvise MADV_DONTNEED; the
  pages stay in the kernel's page cache). Without it every row read leaves ~64 KiB mapped, and the
  resident memory of a long run grows towards the size of the corpus."""
  mm = getattr(tokens, "_mmap", None)  # np.memmap's mapping; absent for arrays in memory
  if mm is None or not hasattr(mmap, "MADV_DONTNEED"):
    return
  base = tokens.offset % mmap.ALLOCATIONGRANULARITY  # where the array starts in the mapping
  start = (base + lo * tokens.itemsize) // _FAULT_WINDOW * _FAULT_WINDOW
  stop = min(-(-(base + hi * tokens.itemsize) // _FAULT_WINDOW) * _FAULT_WINDOW, len(mm))
  mm.madvise(mmap.MADV_DONTNEED, start, stop - start)


@dataclasses.dataclass(frozen=True)
class Rows:
  """Rows of row_len tokens, numbered 0..n_rows-1, read from pieces of memory-mapped shards.

  A piece is (shard's tokens, first row, number of rows): a whole shard, a row range of one (a
  held-out tail), or the shards of several sources one after another. Nothing is read until
  read() asks for rows.
  """

  row_len: int
  pieces: tuple[tuple[np.ndarray, int, int], ...]

  @property
  def n_rows(self) -> int:
    return sum(n for _, _, n in self.pieces)

  def _starts(self) -> np.ndarray:
    return np.cumsum([0] + [n for _, _, n in self.pieces])

  def read(self, rows_N: np.ndarray) -> np.ndarray:
    """(N, row_len) int32: the rows numbered rows_N, read from disk (only those)."""
    rows_N = np.asarray(rows_N, np.int64)
    if rows_N.size and (rows_N.min() < 0 or rows_N.max() >= self.n_rows):
      raise IndexError(f"row out of range [0, {self.n_rows})")
    starts = self._starts()
    piece_N = np.searchsorted(starts, rows_N, side="right") - 1
    out_NxL1 = np.empty((len(rows_N), self.row_len), np.int32)
    for i, (p, r) in enumerate(zip(piece_N, rows_N)):
      tokens, first, _ = self.pieces[p]
      row = first + int(r - starts[p])
      out_NxL1[i] = tokens[row * self.row_len:(row + 1) * self.row_len]
      _unmap(tokens, row * self.row_len, (row + 1) * self.row_len)
    return out_NxL1

  def take(self, start: int, stop: int) -> "Rows":
    """Rows start..stop-1 as their own Rows, numbered from 0."""
    pieces, offset = [], 0
    for tokens, first, n in self.pieces:
      lo, hi = max(start - offset, 0), min(stop - offset, n)
      if lo < hi:
        pieces.append((tokens, first + lo, hi - lo))
      offset += n
    return Rows(self.row_len, tuple(pieces))

  @staticmethod
  def concat(parts: Sequence["Rows"]) -> "Rows":
    return Rows(parts[0].row_len, tuple(p for part in parts for p in part.pieces))


# (path, size, mtime_ns, vocab_size) of every shard verify_shard passed in this process.
_VERIFIED: set[tuple[str, int, int, int]] = set()
_RANGE_CHUNK = 1 << 24  # tokens per range-check chunk


def _first_out_of_range(path: str, offset: int, dtype: np.dtype, count: int,
                        vocab_size: int) -> Optional[tuple[int, int]]:
  """(position, id) of the first token id >= vocab_size in a .npy's data, or None. Reads through
  a memory map of its own, closed after: the pages it touched are not left in the run's."""
  if not count:
    return None
  with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
    # The array is a temporary: its hold on the map ends with the call, before the map closes.
    return _scan_ids(np.frombuffer(mm, dtype=dtype, count=count, offset=offset), vocab_size)


def _scan_ids(tokens: np.ndarray, vocab_size: int) -> Optional[tuple[int, int]]:
  for lo in range(0, len(tokens), _RANGE_CHUNK):
    chunk = tokens[lo:lo + _RANGE_CHUNK]
    if int(chunk.max()) >= vocab_size:
      at = int(np.argmax(chunk >= vocab_size))
      return lo + at, int(chunk[at])
  return None


def verify_shard(folder: str, shard: dict, vocab_size: int) -> None:
  """DataError naming the shard file unless it exists, has the size and crc32 its manifest
  records (when it records them) and holds only ids below vocab_size. Once per process for a
  file of the same size and mtime."""
  path = os.path.join(folder, shard["file"])
  fix = f"delete {folder} to prepare it again"
  try:
    st = os.stat(path)
  except FileNotFoundError:
    raise files_lib.DataError(f"{path} is missing; {fix}") from None
  key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, vocab_size)
  if key in _VERIFIED:
    return
  if "bytes" in shard and st.st_size != shard["bytes"]:
    raise files_lib.DataError(
        f"{path}: {st.st_size} bytes, its manifest says {shard['bytes']}; {fix}")
  crc = file_crc32(path) if "crc32" in shard else None
  if crc is not None and crc != shard["crc32"]:
    raise files_lib.DataError(
        f"{path}: checksum mismatch (manifest crc32 {shard['crc32']}, file {crc}); {fix}")
  tokens = _load_shard(path, fix)
  bad = _first_out_of_range(path, tokens.offset, tokens.dtype, len(tokens), vocab_size)
  if bad is not None:
    raise files_lib.DataError(f"{path}: token id {bad[1]} at position {bad[0]} is outside the "
                              f"vocabulary of {vocab_size}; {fix}")
  _VERIFIED.add(key)


def _load_shard(path: str, fix: str) -> np.memmap:
  """The shard memory-mapped; DataError naming it when it is not a readable .npy."""
  try:
    return np.load(path, mmap_mode="r")
  except (OSError, ValueError) as e:
    raise files_lib.DataError(f"{path} cannot be read as a shard ({e}); {fix}") from None


def open_split(folder: str, manifest: dict, split: str, row_len: int,
               vocab_size: Optional[int] = None) -> Rows:
  """The split's shards memory-mapped (np.load mmap_mode="r": pages are read when a row is),
  each verified first (verify_shard) against vocab_size (default: the manifest's)."""
  pieces = []
  for shard in manifest["splits"][split]["shards"]:
    verify_shard(folder, shard, vocab_size or int(manifest["vocab_size"]))
    tokens = _load_shard(os.path.join(folder, shard["file"]),
                         f"delete {folder} to prepare it again")
    if len(tokens) != shard["tokens"]:
      raise files_lib.DataError(
          f"{folder}/{shard['file']} holds {len(tokens)} tokens, its manifest says "
          f"{shard['tokens']}; delete {folder} to prepare it again")
    if len(tokens) // row_len:
      pieces.append((tokens, 0, len(tokens) // row_len))
  return Rows(row_len, tuple(pieces))

