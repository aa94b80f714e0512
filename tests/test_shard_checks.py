"""Shards that prove themselves (train/data/shards.py): checksums, token-id ranges, changed source
files and broken manifests are one DataError naming the file or folder."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

from train.data import pipeline as data_lib
from train.data import shards as shards_lib

SEQ_LEN, BATCH = 16, 2


def _prepare(workdir, paths) -> data_lib.Prepared:
  return data_lib.prepare(str(workdir), data_lib.Settings(paths=paths, vocab_size=300),
                          progress=False)


def _open(prepared: data_lib.Prepared) -> data_lib.Corpus:
  return data_lib.open_corpus(prepared, SEQ_LEN, BATCH)


def _edit_manifest(folder: str, edit) -> None:
  path = os.path.join(folder, shards_lib.MANIFEST)
  with open(path, encoding="utf-8") as f:
    manifest = json.load(f)
  edit(manifest)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(manifest, f)


def test_a_shard_with_one_byte_flipped_is_refused_naming_it(tmp_path, tiny_corpus):
  """Catches: shards read without their checksum (a flipped byte that leaves the id in range
  trains silently), or an error that does not name the file."""
  prepared = _prepare(tmp_path / "run", tiny_corpus)  # prepared, not yet opened in this process
  folder = prepared.folders[0]
  shard = prepared.manifests[0]["splits"]["train"]["shards"][0]
  assert shard["crc32"] == shards_lib.file_crc32(os.path.join(folder, shard["file"]))
  path = os.path.join(folder, "train-00000.npy")
  with open(path, "r+b") as f:  # the low byte of the last token: an id still in the vocabulary
    f.seek(-2, os.SEEK_END)
    low = f.read(1)[0]
    f.seek(-2, os.SEEK_END)
    f.write(bytes([low ^ 1]))
  with pytest.raises(data_lib.DataError, match=(
      rf"^{path}: checksum mismatch \(manifest crc32 {shard['crc32']}, file [0-9a-f]{{8}}\); "
      rf"delete {folder} to prepare it again$")):
    _open(prepared)


def test_an_id_outside_the_vocabulary_is_refused_naming_the_file_and_position(tmp_path,
                                                                             tiny_corpus):
  """Catches: ids never range-checked (0xFFFF then reads past the embedding as NaN loss), a
  manifest from before checksums refused instead of range-checked, the wrong position."""
  prepared = _prepare(tmp_path / "run", tiny_corpus)
  folder = prepared.folders[0]
  path = os.path.join(folder, "train-00000.npy")
  tokens = np.load(path, mmap_mode="r+")
  tokens[12] = 300  # the vocabulary is 0..299
  tokens.flush()
  del tokens
  _edit_manifest(folder, lambda m: [s.pop("crc32") for s in m["splits"]["train"]["shards"]])
  with pytest.raises(data_lib.DataError, match=(
      rf"^{path}: token id 300 at position 12 is outside the vocabulary of 300; delete")):
    _open(_prepare(tmp_path / "run", tiny_corpus))


def test_a_shard_is_verified_once_per_process(tmp_path, tiny_corpus, monkeypatch):
  """Catches: a checksum recomputed at every open (a large corpus read whole at every start of
  every evaluation), or one never recomputed after the file changed."""
  prepared = _prepare(tmp_path / "run", tiny_corpus)
  calls = []
  crc32 = shards_lib.file_crc32
  monkeypatch.setattr(shards_lib, "file_crc32", lambda p: calls.append(p) or crc32(p))
  _open(prepared)
  n_shards = sum(len(prepared.manifests[0]["splits"][s]["shards"]) for s in shards_lib.SPLITS)
  assert len(calls) == n_shards
  _open(prepared)
  assert len(calls) == n_shards
  path = os.path.join(prepared.folders[0], "train-00000.npy")
  st = os.stat(path)
  os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  _open(prepared)
  assert calls[n_shards:] == [path]


def test_an_edited_source_file_is_refused_and_a_touched_one_reused(tmp_path, tiny_corpus):
  """Catches: stale shards reused after their corpus was edited (the size, or the mtime and
  then the sha256, never compared), or a file merely touched refused."""
  _prepare(tmp_path / "run", tiny_corpus)
  doc = str(tmp_path / "corpus" / "doc0.txt")
  st = os.stat(doc)
  os.utime(doc, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, not edited
  assert _prepare(tmp_path / "run", tiny_corpus).written == (False,)
  text = open(doc, encoding="utf-8").read()
  with open(doc, "w", encoding="utf-8") as f:  # same size, other bytes, later mtime
    f.write(text[::-1])
  os.utime(doc, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
  with pytest.raises(data_lib.DataError, match=rf"^{os.path.abspath(doc)} changed since "
                                               r"\S+/data/src-\w+ was prepared from it .*delete"):
    _prepare(tmp_path / "run", tiny_corpus)
  with open(doc, "a", encoding="utf-8") as f:  # another size
    f.write("more words\n")
  with pytest.raises(data_lib.DataError, match=rf"^{os.path.abspath(doc)} changed since"):
    _prepare(tmp_path / "run", tiny_corpus)


def test_a_manifest_missing_a_key_or_a_shard_file_is_one_line_naming_the_folder(tmp_path,
                                                                               tiny_corpus):
  """Catches: the KeyError and FileNotFoundError tracebacks these used to be."""
  prepared = _prepare(tmp_path / "run", tiny_corpus)
  folder = prepared.folders[0]
  [shard] = glob.glob(os.path.join(folder, "train-*.npy"))
  os.remove(shard)
  with pytest.raises(data_lib.DataError, match=rf"^{shard} is missing; delete {folder}"):
    _open(prepared)
  _edit_manifest(folder, lambda m: m.pop("tokenizer_sha256"))
  with pytest.raises(data_lib.DataError,
                     match=rf"^{folder}/manifest.json lacks tokenizer_sha256; delete {folder}"):
    _prepare(tmp_path / "run", tiny_corpus)
