"""Alignment data: task pairs and prompts, JSONL reading with one-line errors, masks, batches."""

import json
import random

import ml_collections
import numpy as np
import pytest

from train.align import data as data_lib
from train.align import rewards



def _task(**overrides):
  fields = dict(digits=2, ops="+-*", n_train=50, n_heldout=20, n_validation=30,
                heldout_fraction=0.2, spaced_digits=False, seed=0)
  return ml_collections.ConfigDict(dict(fields, **overrides))


TASK = _task()


def _write(path, rows):
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
                  encoding="utf-8")
  return str(path)


def test_task_pairs_are_deterministic_with_a_correct_chosen_and_a_wrong_rejected():
  pairs = data_lib.task_pairs(TASK, seed=0)
  assert pairs == data_lib.task_pairs(TASK, seed=0)
  assert len(pairs) == TASK.n_train
  for p in pairs:
    a, op, b = _parse(p.prompt)
    assert int(p.chosen) == {"+": a + b, "-": a - b, "*": a * b}[op]
    assert p.rejected != p.chosen


def _parse(prompt):
  body = prompt.rstrip("=")
  for i, ch in enumerate(body[1:], start=1):  # skip a leading sign
    if ch in "+-*":
      return int(body[:i]), ch, int(body[i + 1:])
  raise AssertionError(prompt)


def test_train_validation_and_test_are_disjoint_of_their_sizes_and_fixed():
  # Catches validation drawn from the test problems (a stop or a setting chosen on the reported
  # set), a split whose size is another setting's, and sets that move when another size changes.
  train, val, test = ([e.prompt for e in data_lib.task_examples(TASK, s)]
                      for s in ("train", "validation", "test"))
  assert (len(set(train)), len(set(val)), len(set(test))) == (50, 30, 20)
  assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
  assert [e.prompt for e in data_lib.task_examples(TASK, "heldout")] == test  # the old name
  more = _task(n_train=500, n_validation=60)
  assert [e.prompt for e in data_lib.task_examples(more, "test")] == test
  assert [e.prompt for e in data_lib.task_examples(more, "validation")][:30] == val
  with pytest.raises(data_lib.DataError, match="split must be"):
    data_lib.task_examples(TASK, "val")


def test_a_user_eval_file_is_halved_into_validation_and_test(tmp_path):
  settings = ml_collections.ConfigDict(dict(train_path="", validation_path="", eval_path=_write(
      tmp_path / "e.jsonl", [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(40)])))
  val, test = data_lib.heldout_examples(settings, TASK)
  assert len(val) + len(test) == 40 and 8 < len(val) < 32
  assert not {e.prompt for e in val} & {e.prompt for e in test}
  settings.validation_path = _write(tmp_path / "v.jsonl", [{"prompt": "0+1=", "answer": "1"}])
  with pytest.raises(data_lib.DataError, match="share the prompt '0\\+1='"):
    data_lib.heldout_examples(settings, TASK)


def test_spaced_digits_render_prompt_and_both_answers_spaced():
  pair = data_lib.task_pairs(_task(spaced_digits=True), seed=0)[0]
  assert pair.prompt.startswith(" ") and pair.prompt.endswith(" =")
  assert pair.chosen.replace(" ", "") != pair.rejected.replace(" ", "")
  assert pair.chosen.startswith(" ") and pair.rejected.startswith(" ")


def test_wrong_answer_is_a_near_miss():
  rng = random.Random(0)
  for answer in ["0", "7", "-12", "130", "9801"]:
    for _ in range(20):
      wrong = data_lib.wrong_answer(answer, rng)
      assert wrong != answer
      assert abs(int(wrong) - int(answer)) < 10 ** len(answer.lstrip("-"))


def test_jsonl_pairs_and_prompts_are_read(tmp_path):
  path = _write(tmp_path / "p.jsonl", [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}, "",
                                       {"prompt": "2+2=", "chosen": "4", "rejected": "5", "x": 1}])
  assert data_lib.load_pairs(path, TASK, 0) == [data_lib.Pair("1+1=", "2", "3"),
                                                data_lib.Pair("2+2=", "4", "5")]
  path = _write(tmp_path / "q.jsonl", [{"prompt": "1+1=", "answer": "2"}])
  assert data_lib.load_examples(path, TASK, "train") == [data_lib.Prompted("1+1=", "2")]


@pytest.mark.parametrize("rows,message", [
    ([{"prompt": "1+1=", "chosen": "2", "rejected": "3"}, {"prompt": "2+2=", "chosen": "4"}],
     ":2: missing field 'rejected'"),
    (['{"prompt": "1+1=", "chosen": "2",'], ":1: not valid JSON"),
    ([{"prompt": "1+1=", "chosen": 2, "rejected": "3"}], ":1: field 'chosen' must be a string"),
    (["[1, 2]"], ":1: expected a JSON object"),
])
def test_malformed_jsonl_names_file_line_and_field(tmp_path, rows, message):
  path = _write(tmp_path / "bad.jsonl", rows)
  with pytest.raises(data_lib.DataError) as e:
    data_lib.load_pairs(path, TASK, 0)
  assert str(e.value).startswith(path + message)
  assert "\n" not in str(e.value)


def test_missing_and_empty_files_are_named(tmp_path):
  with pytest.raises(data_lib.DataError, match="no such file"):
    data_lib.load_examples(str(tmp_path / "none.jsonl"), TASK, "train")
  with pytest.raises(data_lib.DataError, match="holds no examples"):
    data_lib.load_examples(_write(tmp_path / "empty.jsonl", [""]), TASK, "train")


def test_pack_masks_prompt_and_padding_targets():
  seqs = data_lib.pack([[1, 2, 3], [4]], [[5, 0], [6, 7, 0]], 6, pad_id=9)
  np.testing.assert_array_equal(seqs.inputs_NxT, [[1, 2, 3, 5, 9, 9], [4, 6, 7, 9, 9, 9]])
  np.testing.assert_array_equal(seqs.targets_NxT, [[2, 3, 5, 0, 9, 9], [6, 7, 0, 9, 9, 9]])
  np.testing.assert_array_equal(seqs.mask_NxT, [[0, 0, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]])


def test_batches_are_a_function_of_the_step_and_cover_each_epoch():
  first = np.concatenate([data_lib.batch_indices(10, 4, s, seed=3) for s in range(5)])
  again = np.concatenate([data_lib.batch_indices(10, 4, s, seed=3) for s in range(5)])
  np.testing.assert_array_equal(first, again)
  assert sorted(first[:10]) == list(range(10)) and sorted(first[10:20]) == list(range(10))
  assert not np.array_equal(first[:10], first[10:20])  # a fresh order every epoch


def test_rewards_exact_match_and_format():
  ok = rewards.Sample("1+1=", " 2", True, "2")
  assert rewards.exact_match(ok) == 1.0 and rewards.integer_format(ok) == 1.0
  cut = rewards.Sample("1+1=", "2", False, "2")  # no end-of-text: right value, bad form
  assert rewards.exact_match(cut) == 1.0 and rewards.integer_format(cut) == 0.0
  wrong = rewards.Sample("1+1=", "3", True, "2")
  assert rewards.exact_match(wrong) == 0.0 and rewards.integer_format(wrong) == 1.0
  total, parts = rewards.score([ok, wrong], rewards.parse_weights("exact_match:1,format:0.5"))
  np.testing.assert_allclose(total, [1.5, 0.5])
  assert set(parts) == {"exact_match", "format"}
  with pytest.raises(ValueError, match="unknown reward 'length'"):
    rewards.parse_weights("length:1")
