"""train/studies/kv_retrieval.py: determinism, the answer is the gold pair's value, positions."""

import random

import pytest

from train.studies import kv_retrieval as kv


def test_generators_are_deterministic():
  assert kv.training_examples(20, 2, 8, seed=3) == kv.training_examples(20, 2, 8, seed=3)
  assert kv.eval_examples(5, 10, 4, seed=0) == kv.eval_examples(5, 10, 4, seed=0)
  assert kv.eval_examples(5, 10, 4, seed=0) != kv.eval_examples(5, 10, 4, seed=1)


def test_the_answer_is_the_value_of_the_queried_key():
  for e in kv.eval_examples(50, 12, 5, seed=0):
    assert len(set(e.keys)) == 12  # keys are distinct, so the answer is unique
    assert e.gold == 5 and e.answer == f" {e.values[5]}"
    assert e.prompt.endswith(f" ? {e.keys[5]}")
    assert all(10 <= key < 55 for key in e.keys) and all(55 <= v < 100 for v in e.values)


def test_hand_made_example_text():
  e = kv.Example(keys=(37, 12, 44), values=(81, 65, 99), gold=1)
  assert e.prompt == " 37 81 12 65 44 99 ? 12" and e.answer == " 65"
  both = kv.Example(keys=(37, 12), values=(81, 65), gold=0, query_before=True, more=(1,))
  assert both.prompt == " ? 37 | 37 81 12 65 ? 37"
  assert both.text == " ? 37 | 37 81 12 65 ? 37 81 ? 12 65"


def test_gold_positions_cover_both_ends():
  assert kv.gold_positions(20, 5) == [0, 5, 10, 14, 19]
  assert kv.gold_positions(3, 5) == [0, 1, 2]


def test_training_examples_respect_k_range_questions_and_query_share():
  ex = kv.training_examples(400, 3, 6, seed=0, query_before_fraction=0.5, questions=3)
  assert {e.k for e in ex} == {3, 4, 5, 6}
  assert all(len(e.more) == 2 and e.gold not in e.more and len(set(e.more)) == 2 for e in ex)
  assert 0.35 < sum(e.query_before for e in ex) / len(ex) < 0.65


def test_bad_arguments_are_rejected():
  with pytest.raises(ValueError, match="gold"):
    kv.make_example(random.Random(0), 3, 3)
  with pytest.raises(ValueError, match="k must"):
    kv.make_example(random.Random(0), 46, 0)
