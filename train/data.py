"""Corpus -> tokens -> packed sequences -> shuffled batches, as a grain pipeline.

The pipeline: documents (the default corpus or the user's files) are tokenized, each followed by
end-of-text, concatenated and split into rows of seq_len + 1 tokens (inputs are row[:-1], targets
row[1:]). Training batches come from a grain MapDataset over those rows: sharded by JAX process,
shuffled with a seed (a fresh order every epoch), repeated and batched. Its iterator state is a
small dict saved in every checkpoint, so a resumed run sees exactly the batches it would have.

Default corpus: the Python standard library of the running interpreter (no download). Files go to
train or validation by a hash of their path, so the split never changes between runs.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import sysconfig
from typing import Iterable, Optional, Sequence

import grain
import numpy as np
from tokenizers import Tokenizer

from train import files as files_lib  # `files` is a parameter name here
from train import tokenizer as tokenizer_lib

VAL_PERCENT = 5  # share of documents held out for validation


DataError = files_lib.DataError  # re-exported: callers and tests catch data.DataError

@dataclasses.dataclass(frozen=True)
class Document:
  key: str  # stable identity (path, or path:line), hashed for the train/validation split
  text: str


def _split_of(key: str) -> str:
  h = int(hashlib.sha1(key.encode()).hexdigest(), 16)
  return "val" if h % 100 < VAL_PERCENT else "train"


def stdlib_files() -> list[str]:
  """The .py files of this interpreter's standard library, site-packages excluded, sorted."""
  root = sysconfig.get_paths()["stdlib"]
  out = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "__pycache__"))
    out.extend(os.path.join(dirpath, f) for f in filenames if f.endswith(".py"))
  return sorted(out)


def parse_paths(paths) -> list[str]:
  """data.paths as a list of globs: accepts a comma-separated string or a sequence."""
  if isinstance(paths, str):
    paths = [p for p in paths.split(",")]
  return [p.strip() for p in paths if p and p.strip()]


def resolve_files(patterns: Sequence[str]) -> list[str]:
  files = []
  for pattern in patterns:
    matched = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    matched = [m for m in matched if os.path.isfile(m)]
    if not matched:
      raise DataError(f"data.paths: {pattern!r} matches no file")
    for m in matched:
      if not m.endswith((".txt", ".jsonl")):
        raise DataError(f"data.paths: {m!r} is neither .txt (one document) nor .jsonl (a 'text' per line)")
    files.extend(matched)
  return files


def read_documents(files: Sequence[str], relative_to: Optional[str] = None) -> Iterable[Document]:
  """Documents from .txt (one per file), .jsonl (a `text` field per line) or .py files."""
  for path in files:
    key = os.path.relpath(path, relative_to) if relative_to else path
    if path.endswith(".jsonl"):
      bad_line = "not valid JSON ({msg}); fix the file or drop it from data.paths"
      for lineno, record in files_lib.iter_jsonl(path, bad_line=bad_line):
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
          raise DataError(f"{path}:{lineno}: line has no string field 'text'; fix the file or drop it from data.paths")
        yield Document(f"{key}:{lineno}", record["text"])
    else:
      with open(path, encoding="utf-8", errors="replace") as f:
        yield Document(key, f.read())


def load_corpus(paths) -> dict[str, list[str]]:
  """{'train': [...], 'val': [...]} texts. paths empty = the default standard-library corpus."""
  patterns = parse_paths(paths)
  if patterns:
    docs = list(read_documents(resolve_files(patterns)))
    where = f"data.paths={','.join(patterns)!r}"
  else:
    root = sysconfig.get_paths()["stdlib"]
    docs = list(read_documents(stdlib_files(), relative_to=root))
    where = f"the default corpus ({root})"
  docs = [d for d in docs if d.text.strip()]
  if not docs:
    raise DataError(f"{where}: the corpus has no text; point data.paths at non-empty files")
  split = {"train": [], "val": []}
  for d in docs:
    split[_split_of(d.key)].append(d.text)
  if not split["train"]:  # a tiny corpus can hash entirely into validation
    split["train"], split["val"] = split["val"], []
  return split


def tokenize(docs: Sequence[str], tok: Tokenizer) -> np.ndarray:
  """One flat int32 stream: each document's tokens followed by end-of-text (and preceded by the
  BOS an imported tokenizer starts a text with, as an imported Llama's documents are; llmlab's
  own documents start after the previous one's end-of-text)."""
  eot = tokenizer_lib.special_id(tok, tokenizer_lib.EOT)
  bos = tokenizer_lib.start_ids(tok) if tokenizer_lib.BOS in tokenizer_lib.roles(tok) else []

  def encode_chunk(texts: Sequence[str]) -> np.ndarray:
    encoded = tok.encode_batch(list(texts), add_special_tokens=False)
    return np.concatenate([np.asarray(bos + e.ids + [eot], np.int32) for e in encoded])

  chunks = grain.MapDataset.source(list(docs)).batch(256, batch_fn=list).map(encode_chunk)
  parts = list(chunks)
  return np.concatenate(parts) if parts else np.zeros((0,), np.int32)


def pack(tokens: np.ndarray, seq_len: int) -> np.ndarray:
  """(N, seq_len + 1) rows cut from the stream; the incomplete tail is dropped."""
  row = seq_len + 1
  n = len(tokens) // row
  return tokens[: n * row].reshape(n, row)


@dataclasses.dataclass
class Corpus:
  """Packed rows, ready to batch."""

  train_NxL1: np.ndarray
  val_NxL1: np.ndarray
  n_train_tokens: int
  unigram_entropy: float  # nats per token of the training split, the no-context baseline


def unigram_entropy(tokens: np.ndarray) -> float:
  counts = np.bincount(tokens).astype(np.float64)
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())


def prepare(
    workdir: str, paths, seq_len: int, vocab_size: int, batch_size: int
) -> tuple[Tokenizer, Corpus]:
  """Trains (or reuses) the tokenizer in `workdir` and builds the packed corpus.

  Raises DataError naming the setting to change when the corpus cannot feed one batch.
  """
  if vocab_size < tokenizer_lib.min_vocab_size():
    raise DataError(
        f"data.vocab_size={vocab_size} is too small: byte-level BPE needs at least "
        f"{tokenizer_lib.min_vocab_size()} (256 bytes + special tokens)")
  split = load_corpus(paths)
  if os.path.exists(os.path.join(workdir, tokenizer_lib.FILENAME)):
    tok = tokenizer_lib.load(workdir)
  else:
    tok = tokenizer_lib.train_bpe(split["train"], vocab_size)
    os.makedirs(workdir, exist_ok=True)
    tokenizer_lib.save(tok, workdir)
  train_tokens, val_tokens = _cached_tokens(workdir, split, tok)
  train = pack(train_tokens, seq_len)
  val = pack(val_tokens, seq_len)
  if len(val) == 0:  # no held-out documents: hold out the tail of the training stream instead
    n_val = max(1, len(train) // 20)
    if len(train) > n_val:
      train, val = train[:-n_val], train[-n_val:]
  if len(train) < batch_size:
    raise DataError(
        f"the training split has {len(train)} sequences of data.seq_len+1={seq_len + 1} tokens, "
        f"fewer than one batch (train.batch_size={batch_size}); lower train.batch_size or "
        "data.seq_len, or add text to data.paths")
  return tok, Corpus(train, val, int(train.size), unigram_entropy(train_tokens))


def _cached_tokens(workdir: str, split: dict, tok: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
  """Token streams of both splits, cached in workdir/data keyed by a hash of texts and tokenizer,
  so a resumed run skips tokenization but never reuses stale tokens."""
  h = hashlib.sha1(tok.to_str().encode())
  h.update(json.dumps(tokenizer_lib.roles(tok), sort_keys=True).encode())  # BOS, EOT change ids
  for name in ("train", "val"):
    for text in split[name]:
      h.update(text.encode("utf-8", "replace"))
      h.update(b"\0")
    h.update(name.encode())
  path = os.path.join(workdir, "data", f"tokens-{h.hexdigest()[:16]}.npz")
  if os.path.exists(path):
    with np.load(path) as z:
      return z["train"], z["val"]
  train, val = tokenize(split["train"], tok), tokenize(split["val"], tok)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(tmp, train=train, val=val)
  os.replace(tmp, path)
  return train, val


def train_iterator(
    rows_NxL1: np.ndarray,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.DatasetIterator:
  """Endless iterator of (batch_size, seq_len + 1) int32 batches for this process.

  batch_size is this process's share of the global batch. get_state()/set_state() on the result
  save and restore the position exactly.
  """
  ds = grain.MapDataset.source(rows_NxL1)[process_index::process_count]
  ds = ds.shuffle(seed=seed).repeat()  # a new permutation every epoch
  ds = ds.batch(batch_size, drop_remainder=True)
  return iter(ds.to_iter_dataset())


def eval_batches(rows_NxL1: np.ndarray, batch_size: int, n_batches: int) -> list[np.ndarray]:
  """The first n_batches validation batches, the same every time (wrapping a small split)."""
  n = len(rows_NxL1)
  idx = np.arange(n_batches * batch_size) % max(n, 1)
  return [rows_NxL1[idx[i * batch_size:(i + 1) * batch_size]] for i in range(n_batches)]
