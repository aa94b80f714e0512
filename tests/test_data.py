"""The data pipeline: splits, packing, determinism, iterator-state restore, and bad inputs."""

import json

import numpy as np
import pytest

from train import data as data_lib


def test_default_corpus_split_is_deterministic_and_nonempty():
  files = data_lib.stdlib_files()
  assert len(files) > 100 and all(f.endswith(".py") for f in files)
  keys = [f"pkg/mod{i}.py" for i in range(2000)]
  first = [data_lib._split_of(k) for k in keys]
  assert first == [data_lib._split_of(k) for k in keys]
  share = first.count("val") / len(first)
  assert 0.02 < share < 0.09


def test_pack_cuts_rows_of_seq_len_plus_one():
  rows = data_lib.pack(np.arange(23, dtype=np.int32), seq_len=4)
  assert rows.shape == (4, 5)
  np.testing.assert_array_equal(rows[1], [5, 6, 7, 8, 9])


def test_prepare_reads_txt_and_jsonl_and_appends_end_of_text(tmp_path, tiny_corpus):
  tok, corpus = data_lib.prepare(str(tmp_path), tiny_corpus, seq_len=16, vocab_size=300, batch_size=4)
  eot = tok.token_to_id("<|endoftext|>")
  assert corpus.train_NxL1.shape[1] == 17
  assert (corpus.train_NxL1 == eot).sum() >= 1
  assert len(corpus.val_NxL1) >= 1
  assert (tmp_path / "tokenizer.json").exists()


def test_same_seed_gives_same_batches_and_epochs_reshuffle():
  rows = np.arange(40, dtype=np.int32).reshape(10, 4)
  a = data_lib.train_iterator(rows, batch_size=2, seed=7)
  b = data_lib.train_iterator(rows, batch_size=2, seed=7)
  first = [next(a) for _ in range(10)]
  for x in first:
    np.testing.assert_array_equal(x, next(b))
  epoch1 = np.concatenate(first[:5])[:, 0]
  epoch2 = np.concatenate(first[5:])[:, 0]
  assert sorted(epoch1) == sorted(epoch2) == list(range(0, 40, 4))
  assert list(epoch1) != list(epoch2)


def test_iterator_state_restores_the_exact_position():
  rows = np.arange(60, dtype=np.int32).reshape(15, 4)
  it = data_lib.train_iterator(rows, batch_size=3, seed=1)
  for _ in range(7):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(6)]
  fresh = data_lib.train_iterator(rows, batch_size=3, seed=1)
  fresh.set_state(json.loads(json.dumps(state)))  # as stored in a checkpoint
  for e in expected:
    np.testing.assert_array_equal(next(fresh), e)


def test_processes_read_disjoint_shards():
  rows = np.arange(32, dtype=np.int32).reshape(8, 4)
  seen = []
  for process in range(2):
    it = data_lib.train_iterator(rows, 2, 0, process, 2)
    seen.append(set(np.concatenate([next(it) for _ in range(2)])[:, 0]))
  assert not seen[0] & seen[1]
  assert len(seen[0] | seen[1]) == 8


def test_path_matching_nothing_names_the_setting(tmp_path):
  with pytest.raises(data_lib.DataError, match=r"data.paths: '.*nothing\*.txt' matches no file"):
    data_lib.prepare(str(tmp_path / "w"), str(tmp_path / "nothing*.txt"), 16, 300, 2)


def test_empty_corpus_is_refused(tmp_path):
  (tmp_path / "a.txt").write_text("   \n")
  with pytest.raises(data_lib.DataError, match="the corpus has no text"):
    data_lib.prepare(str(tmp_path / "w"), str(tmp_path / "a.txt"), 16, 300, 2)


def test_corpus_smaller_than_one_batch_is_refused(tmp_path):
  (tmp_path / "a.txt").write_text("just a few words of text here")
  with pytest.raises(data_lib.DataError, match=r"fewer than one batch \(train.batch_size=64\)"):
    data_lib.prepare(str(tmp_path / "w"), str(tmp_path / "a.txt"), 16, 300, 64)


def test_jsonl_line_without_text_names_file_and_line(tmp_path):
  p = tmp_path / "c.jsonl"
  p.write_text('{"text": "ok"}\n{"body": "no text here"}\n')
  with pytest.raises(data_lib.DataError, match=r"c.jsonl:2: line has no string field 'text'"):
    data_lib.prepare(str(tmp_path / "w"), str(p), 16, 300, 2)


def test_vocab_size_below_bytes_plus_specials_is_refused(tmp_path, tiny_corpus):
  with pytest.raises(data_lib.DataError, match="data.vocab_size=100 is too small"):
    data_lib.prepare(str(tmp_path / "w"), tiny_corpus, 16, 100, 2)


def test_unsupported_file_type_is_refused(tmp_path):
  (tmp_path / "a.csv").write_text("x,y")
  with pytest.raises(data_lib.DataError, match="neither .txt"):
    data_lib.prepare(str(tmp_path / "w"), str(tmp_path / "a.csv"), 16, 300, 2)
