"""train/data/arithmetic.py: determinism, exact answers, a held-out split that never leaks."""

import pytest

from train.data import arithmetic


def test_same_arguments_give_the_same_problems():
  a = arithmetic.make_problems(50, 3, ("+", "-", "*"), seed=7)
  assert a == arithmetic.make_problems(50, 3, ("+", "-", "*"), seed=7)
  assert a != arithmetic.make_problems(50, 3, ("+", "-", "*"), seed=8)


def test_answers_are_exact_and_operands_have_the_requested_digits():
  for p in arithmetic.make_problems(200, 4, ("+", "-", "*"), seed=0):
    a, b = p.prompt[:-1].split(p.op)
    assert len(a) == len(b) == 4 and a[0] != "0" and b[0] != "0"
    assert int(p.answer) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[p.op]
    assert int(p.answer) >= 0


def test_hand_made_problems():
  assert arithmetic.make_problem(12, 35, "+") == arithmetic.Problem("12+35=", "47", "+", 2)
  assert arithmetic.make_problem(3, 8, "-").prompt == "8-3="  # answers stay non-negative
  assert arithmetic.make_problem(12, 12, "*").answer == "144"


def test_held_out_problems_never_appear_in_any_training_split():
  train_a, test_a = arithmetic.split(arithmetic.make_problems(2000, 2, ("+",), seed=0), 0.2)
  train_b, _ = arithmetic.split(arithmetic.make_problems(2000, 2, ("+",), seed=1), 0.2)
  held = {p.prompt for p in test_a}
  assert held and not held & ({p.prompt for p in train_a} | {p.prompt for p in train_b})
  assert 0.1 < len(test_a) / 2000 < 0.3


def test_spaced_rendering_puts_a_space_before_every_character():
  prompt, answer = arithmetic.render(arithmetic.make_problem(12, 35, "+"))
  assert (prompt, answer) == (" 1 2 + 3 5 =", " 4 7")
  assert arithmetic.normalise(answer) == "47"
  assert arithmetic.documents([arithmetic.make_problem(1, 2, "+")] * 3, 2, False) == [
      "1+2=3\n1+2=3\n", "1+2=3\n"]


def test_bad_arguments_are_rejected():
  with pytest.raises(ValueError, match="digits"):
    arithmetic.make_problems(1, 0)
  with pytest.raises(ValueError, match="ops"):
    arithmetic.make_problems(1, 1, ("/",))
