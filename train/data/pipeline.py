"""Corpus -> token shards on disk -> batches of row indices -> each process's own rows.

prepare() trains (or reuses) the tokenizer and tokenizes every source once into memory-mappable
shards (train/data/shards.py), in data.prepared or <workdir>/data. open_corpus() maps them as rows of
seq_len + 1 tokens (inputs row[:-1], targets row[1:]); nothing of the corpus is loaded.

Batches are a grain pipeline over row INDICES, not rows: per source, the range of its row numbers,
shuffled with the seed (a fresh permutation every epoch) and repeated; the sources mixed by their
weights (grain's MapDataset.mix); then batched to the global batch size. Every process runs the
same index pipeline, so the global batch is a function of the step alone, the iterator state saved
in each checkpoint is the same on every process, and a checkpoint resumes on any number of
processes. Each process then reads from the shards only the rows its own devices hold (row_range).

Every document gives its last tokens to validation (train/data/documents.py val_tokens), so the
validation share of the tokens is VAL_PERCENT% for any number of files. Evaluation rows are drawn
across the whole validation split with a fixed seed (eval_indices, heldout_indices).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from typing import Iterable, Iterator, Optional, Sequence

import grain
import ml_collections
import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from train.data import documents as documents_lib
from train import files as files_lib
from train import config as config_lib
from train.data import shards as shards_lib
from train.data import tokenizer as tokenizer_lib

DataError = files_lib.DataError  # re-exported: callers and tests catch data.DataError
# Re-exported: the default corpus and the split are used by the studies too.
Document = documents_lib.Document
VAL_PERCENT = documents_lib.VAL_PERCENT
stdlib_files = documents_lib.stdlib_files
parse_paths = documents_lib.parse_paths

# The tokenizer learns its merges from at most this many characters of training text (the first
# documents of each source, an equal share each): BPE on a whole 1 GB corpus would take longer
# than tokenizing it, and its merges would barely change. The standard library (32 MB) fits whole.
TOKENIZER_SAMPLE_CHARS = 64_000_000


@dataclasses.dataclass(frozen=True)
class Source:
  setting: str  # the config field naming it, for errors: "data.paths", "data.sources[1]"
  patterns: tuple[str, ...]  # globs; () = the default corpus; ("stdlib:tiny",) = the tiny one
  weight: float = 1.0

  @property
  def builtin(self) -> str:
    """The built-in corpus it names ("stdlib", "stdlib:tiny"), "" for files and globs."""
    return documents_lib.builtin_corpus(self.patterns, self.setting)


# The data.* settings that choose the text and where its shards live (train/config.py DataSettings).
Settings = config_lib.DataSettings


def sources_of(data_settings: Settings) -> list[Source]:
  """The sources to mix; their weights were checked when the settings were built."""
  if not data_settings.sources:
    return [Source("data.paths", tuple(parse_paths(data_settings.paths)))]
  return [Source(f"data.sources[{i}]", tuple(parse_paths(s["paths"])), float(s.get("weight", 1.0)))
          for i, s in enumerate(data_settings.sources)]


def source_files(source: Source) -> list[str]:
  """The source's files, each checked readable (DataError naming the source otherwise)."""
  if source.builtin:
    return documents_lib.builtin_files(source.builtin)
  setting = source.setting if source.setting == "data.paths" else source.setting + ".paths"
  return documents_lib.resolve_files(source.patterns, setting)


def check_sources(data_settings: Settings) -> list[list[str]]:
  """Every source's files: a glob matching nothing, a file that cannot be opened or a source of
  empty files is a one-line DataError here, before anything compiles."""
  return [source_files(s) for s in sources_of(data_settings)]


def source_folder(root: str, source: Source, text_field: str) -> str:
  """root/<name>: one folder per source, named after what selects its text, so that runs on the
  same text share one preparation and a run on other text never reads it."""
  if source.builtin == "stdlib":  # one interpreter's standard library is not another's
    root_hash = hashlib.sha1(documents_lib.stdlib_root().encode()).hexdigest()[:8]
    return os.path.join(root, f"stdlib-{root_hash}")
  if source.builtin:  # its own folder, never the whole library's; a new file list, a new folder
    key = json.dumps([documents_lib.stdlib_root(), documents_lib.STDLIB_TINY_FILES])
    return os.path.join(root, "stdlib-tiny-" + hashlib.sha1(key.encode()).hexdigest()[:8])
  key = json.dumps([sorted(os.path.abspath(os.path.expanduser(p)) for p in source.patterns),
                    text_field])
  return os.path.join(root, "src-" + hashlib.sha1(key.encode()).hexdigest()[:12])


def data_dir(workdir: str, data_settings: Settings) -> str:
  if data_settings.prepared:
    return os.path.expanduser(data_settings.prepared)
  return os.path.join(workdir, "data")


def _documents(source: Source, files: Sequence[str], text_field: str,
               bar: Optional[tqdm] = None) -> Iterator[tuple[str, str]]:
  """(key, text) of every non-blank document, file by file (shards.write_source splits each).
  bar counts the files' bytes: it advances by each document's characters (an estimate: JSON
  escapes and gzip change the bytes), never past the file's size, and catches up at the end of
  the file."""
  # A built-in corpus's keys are paths within the standard library: the same split everywhere.
  relative_to = documents_lib.stdlib_root() if source.builtin else None
  for path in files:
    left = os.path.getsize(path)
    for doc in documents_lib.read_documents([path], relative_to, text_field):
      if bar is not None and left:
        step = min(len(doc.text), left)
        bar.update(step)
        left -= step
      if doc.text.strip():
        yield doc.key, doc.text
    if bar is not None:
      bar.update(left)


def _tokenizer_sample(sources: Sequence[Source], files: Sequence[Sequence[str]],
                      text_field: str) -> Iterator[str]:
  """Training text for the tokenizer: each document's first 100 - VAL_PERCENT % of characters
  (close to the tokens it gives training: its validation tail stays unseen), an equal share of
  TOKENIZER_SAMPLE_CHARS per source."""
  share = TOKENIZER_SAMPLE_CHARS // len(sources)
  for source, fs in zip(sources, files):
    taken = 0
    for _, text in _documents(source, fs, text_field):
      if taken >= share:
        break
      head = text[:len(text) * (100 - VAL_PERCENT) // 100]
      taken += len(head)
      yield head


def tokenizer_for(workdir: str, data_settings: Settings) -> Tokenizer:
  """The run's tokenizer: the workdir's; else the one its shard folder was prepared with (a new
  run on shared shards adopts it); else one trained on a sample of the training text. Saved in
  the workdir (and the shard folder) when it was not there."""
  if os.path.exists(os.path.join(workdir, tokenizer_lib.FILENAME)):
    return tokenizer_lib.load(workdir)
  sources, files = sources_of(data_settings), check_sources(data_settings)
  folder = data_dir(workdir, data_settings)
  os.makedirs(workdir, exist_ok=True)
  if os.path.exists(os.path.join(folder, tokenizer_lib.FILENAME)):
    tok = tokenizer_lib.load(folder)
  else:
    tok = tokenizer_lib.train_bpe(_tokenizer_sample(sources, files, data_settings.text_field),
                                  data_settings.vocab_size)
    os.makedirs(folder, exist_ok=True)
    tokenizer_lib.save(tok, folder)
  tokenizer_lib.save(tok, workdir)
  return tok


@dataclasses.dataclass(frozen=True)
class Prepared:
  tokenizer: Tokenizer
  sources: tuple[Source, ...]
  folders: tuple[str, ...]  # one shard folder per source
  manifests: tuple[dict, ...]
  written: tuple[bool, ...]  # per source: tokenized now (False: its shards were reused)


def prepare(workdir: str, data_settings: Settings, *, progress: bool = True,
            max_shard_tokens: int = shards_lib.MAX_SHARD_TOKENS) -> Prepared:
  """Trains (or reuses) the tokenizer in `workdir` and makes sure every source has complete shards
  made with it: reused when present, written (tokenized once, with a progress bar) otherwise.

  Raises DataError naming the setting or folder to change: a bad file, a corpus without text, or
  shards made with another tokenizer.
  """
  if data_settings.vocab_size < tokenizer_lib.min_vocab_size():
    raise DataError(
        f"data.vocab_size={data_settings.vocab_size} is too small: byte-level BPE needs at least "
        f"{tokenizer_lib.min_vocab_size()} (256 bytes + special tokens)")
  sources = sources_of(data_settings)
  files = check_sources(data_settings)
  root = data_dir(workdir, data_settings)
  tok = tokenizer_for(workdir, data_settings)
  tok_sha = shards_lib.tokenizer_sha256(tok)
  folders, manifests, written = [], [], []
  for source, fs in zip(sources, files):
    folder = source_folder(root, source, data_settings.text_field)
    manifest = shards_lib.read_manifest(folder)
    if manifest is not None:  # reused only while its split and input files are this run's
      shards_lib.check_format(folder, manifest)
      shards_lib.check_source_files(folder, manifest, fs)
    written.append(manifest is None)
    if manifest is None:
      where = (f"{source.setting}={','.join(source.patterns)!r}" if source.patterns
               else f"the default corpus ({documents_lib.stdlib_root()})")
      with tqdm(total=sum(os.path.getsize(f) for f in fs), unit="B", unit_scale=True,
                desc=f"tokenize {os.path.basename(folder)}", disable=not progress,
                dynamic_ncols=True) as bar:
        manifest = shards_lib.write_source(
            folder, _documents(source, fs, data_settings.text_field, bar), tok,
            source={"setting": source.setting, "paths": list(source.patterns),
                    "text_field": data_settings.text_field}, files=fs,
            max_shard_tokens=max_shard_tokens)
      if not any(manifest["splits"][s]["documents"] for s in shards_lib.SPLITS):
        shutil.rmtree(folder, ignore_errors=True)
        raise DataError(f"{where}: the corpus has no text; point it at non-empty files")
    if manifest["tokenizer_sha256"] != tok_sha:
      raise DataError(
          f"{folder} holds shards made with another tokenizer than {workdir}/"
          f"{tokenizer_lib.FILENAME}; delete {folder} to prepare it again, or set data.prepared "
          "to another folder")
    folders.append(folder)
    manifests.append(manifest)
  return Prepared(tok, tuple(sources), tuple(folders), tuple(manifests), tuple(written))


def prepare_config(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """prepare() for config.data in workdir, after validating the whole config (experiments.
  prepare_data); returns the folders, which were written now, seconds, tokens (train and val of
  every source) and tokens per second, and per source the train and val tokens and the unigram
  entropy."""
  config_lib.validate(config)
  start = time.perf_counter()
  prepared = prepare(workdir, Settings.of(config.data))
  seconds = time.perf_counter() - start
  tokens = sum(m["splits"][s]["tokens"] for m in prepared.manifests for s in ("train", "val"))
  return {"folders": list(prepared.folders), "written": list(prepared.written),
          "seconds": round(seconds, 2), "tokens": tokens,
          "tokens_per_sec": round(tokens / max(seconds, 1e-9)),
          "train_tokens": [m["splits"]["train"]["tokens"] for m in prepared.manifests],
          "val_tokens": [m["splits"]["val"]["tokens"] for m in prepared.manifests],
          "unigram_entropy": [m["unigram_entropy"] for m in prepared.manifests]}


@dataclasses.dataclass(frozen=True)
class Corpus:
  """The prepared sources as rows, memory-mapped."""

  train: tuple[shards_lib.Rows, ...]  # one per source
  weights: tuple[float, ...]
  val: shards_lib.Rows  # every source's validation rows, one after another
  n_train_tokens: int
  unigram_entropy: float  # nats per token of the training mixture, the no-context baseline

  @property
  def train_rows(self) -> shards_lib.Rows:
    """Every source's training rows in one numbering: the index pipeline's global row ids."""
    return shards_lib.Rows.concat(self.train)


def _mixture_entropy(prepared: Prepared, weights: Sequence[float]) -> float:
  if len(prepared.folders) == 1:
    return float(prepared.manifests[0]["unigram_entropy"])
  p = 0.0
  for folder, w in zip(prepared.folders, weights):
    counts = shards_lib.unigram_counts(folder).astype(np.float64)
    p = p + w / sum(weights) * counts / max(counts.sum(), 1.0)
  return shards_lib.unigram_entropy(p)


def open_corpus(prepared: Prepared, seq_len: int, batch_size: int) -> Corpus:
  """Every source's shards as rows of seq_len + 1 tokens. A source without validation rows holds
  out the last 5% of its training rows instead. Raises DataError when a source has no row or the
  sources together not one batch."""
  row_len = seq_len + 1
  trains, vals = [], []
  for source, folder, manifest in zip(prepared.sources, prepared.folders, prepared.manifests):
    vocab_size = prepared.tokenizer.get_vocab_size()  # every id is checked against it
    train_rows = shards_lib.open_split(folder, manifest, "train", row_len, vocab_size)
    val_rows = shards_lib.open_split(folder, manifest, "val", row_len, vocab_size)
    n = train_rows.n_rows
    if val_rows.n_rows == 0 and n > 1:
      n_val = max(1, n // 20)
      train_rows, val_rows = train_rows.take(0, n - n_val), train_rows.take(n - n_val, n)
    if train_rows.n_rows == 0:
      raise DataError(
          f"{source.setting} has no sequence of data.seq_len+1={row_len} tokens; lower "
          "data.seq_len or add text to it")
    trains.append(train_rows)
    vals.append(val_rows)
  n_train = sum(t.n_rows for t in trains)
  if n_train < batch_size:
    raise DataError(
        f"the training split has {n_train} sequences of data.seq_len+1={row_len} tokens, "
        f"fewer than one batch (train.batch_size={batch_size}); lower train.batch_size or "
        "data.seq_len, or add text to data.paths")
  weights = tuple(s.weight for s in prepared.sources)
  return Corpus(tuple(trains), weights, shards_lib.Rows.concat(vals), n_train * row_len,
                _mixture_entropy(prepared, weights))


def index_dataset(n_rows: Sequence[int], weights: Sequence[float], batch_size: int,
                  seed: int) -> grain.MapDataset:
  """Endless batches of global row ids (source s owns ids [sum(n_rows[:s]), sum(n_rows[:s+1]))).

  Each source is shuffled and repeated on its own, then the sources are interleaved by weight
  (MapDataset.mix keeps the proportions exact over any window of a few batches).
  """
  parts, offset = [], 0
  for i, n in enumerate(n_rows):
    parts.append(grain.MapDataset.range(offset, offset + n).shuffle(seed=seed + i).repeat())
    offset += n
  ds = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, list(weights))
  return ds.batch(batch_size, drop_remainder=True)


def train_iterator(n_rows: Sequence[int], weights: Sequence[float], batch_size: int,
                   seed: int) -> grain.DatasetIterator:
  """Iterator of (batch_size,) int64 global row ids; get_state()/set_state() save and restore the
  position exactly (the state is the same on every process)."""
  return iter(index_dataset(n_rows, weights, batch_size, seed).to_iter_dataset())


# The seed of the evaluation rows: fixed, so every run (any train.seed) is scored on the same rows.
EVAL_SEED = 0


def heldout_indices(n_rows: int, batch_size: int, eval_batches: int,
                    test_batches: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """(validation batches, test batches) of row ids. Without a test split (test_batches 0) the
  validation batches are eval_indices over every row; with one, a seeded permutation of the rows
  is halved (each half spread over the whole split, every shard and source), validation batches
  drawn from the first half and test batches from the second, so no row is in both."""
  if not test_batches:
    return eval_indices(n_rows, batch_size, eval_batches), []
  half = n_rows // 2
  if half == 0:
    raise DataError(f"the validation split has {n_rows} row(s): too few to halve for "
                    "train.test_batches; set it to 0 or add text")
  perm = np.random.default_rng([EVAL_SEED, n_rows]).permutation(n_rows)
  val_rows, test_rows = np.sort(perm[:half]), np.sort(perm[half:])
  val = [val_rows[ids] for ids in eval_indices(half, batch_size, eval_batches)]
  test = [test_rows[ids] for ids in eval_indices(n_rows - half, batch_size, test_batches)]
  return val, test


def eval_indices(n_rows: int, batch_size: int, n_batches: int) -> list[np.ndarray]:
  """n_batches batches of row ids, (batch_size,) each, the same every time: sampled uniformly
  across all n_rows (not the first rows, which are a few documents of one source, easier or
  harder than the rest). The range is cut into n_batches * batch_size equal strata and one row is
  drawn from each with a fixed seed (EVAL_SEED), so the rows cover every shard and source in
  proportion; a split with fewer rows than that is used whole, in order, wrapping."""
  k = n_batches * batch_size
  if k >= n_rows:
    idx = np.arange(k) % max(n_rows, 1)
  else:
    edges = np.arange(k + 1) * n_rows // k  # strata [edges[i], edges[i+1]), each non-empty
    u = np.random.default_rng([EVAL_SEED, n_rows, k]).random(k)
    idx = edges[:-1] + (u * (edges[1:] - edges[:-1])).astype(np.int64)
  return [idx[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)]


def row_range(device_indices: Iterable[tuple], n_rows: int) -> tuple[int, int]:
  """[lo, hi): the rows of an (n_rows, ...) batch that some devices hold, from each device's index
  tuple (as NamedSharding.addressable_devices_indices_map gives them). A process's devices hold
  one contiguous block of a data-parallel batch."""
  rows = [idx[0] for idx in device_indices]
  lo = min(r.start or 0 for r in rows)
  hi = max(n_rows if r.stop is None else r.stop for r in rows)
  return lo, hi


def tokenize(docs: Sequence[str], tok: Tokenizer) -> np.ndarray:
  """One flat int32 stream of the documents, as prepare writes it (each document's tokens, then
  end-of-text; after the BOS an imported tokenizer starts a text with)."""
  chunk = shards_lib.ENCODE_CHUNK_DOCS
  parts = [shards_lib.encode_chunk(docs[i:i + chunk], tok) for i in range(0, len(docs), chunk)]
  return np.concatenate(parts).astype(np.int32) if parts else np.zeros((0,), np.int32)


def pack(tokens: np.ndarray, seq_len: int) -> np.ndarray:
  """(N, seq_len + 1) rows cut from one stream held in memory; the incomplete tail is dropped."""
  row = seq_len + 1
  n = len(tokens) // row
  return tokens[: n * row].reshape(n, row)
