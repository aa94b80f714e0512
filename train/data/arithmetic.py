"""Integer arithmetic problems: seeded, deterministic, with exact answers and a fixed held-out set.

A Problem is a prompt like "12+35=" and its answer "47". make_problems(n, digits, ops, seed)
draws n of them; both operands have exactly `digits` digits, subtraction keeps the answer
non-negative. split() sends a problem to the held-out set by a hash of its prompt alone, so a
problem is held out (or not) whatever seed or call produced it: training text built from one draw
never contains a held-out problem of another. heldout_part() halves the held-out problems into
validation and test by another part of the same hash.

render(problem, spaced=True) writes "1 2 + 3 5 =" / " 4 7": with a space before every digit a
byte-level BPE cannot merge digits (GPT-2's pre-split keeps " 4" and " 7" apart), so each answer
digit is one token and token-level metrics are digit-level metrics.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from typing import Iterable, Sequence

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclasses.dataclass(frozen=True)
class Problem:
  prompt: str  # "12+35="
  answer: str  # "47"
  op: str
  digits: int


def make_problem(a: int, b: int, op: str) -> Problem:
  if op not in OPS:
    raise ValueError(f"unknown operation {op!r}; allowed: {', '.join(OPS)}")
  if op == "-" and b > a:
    a, b = b, a  # answers stay non-negative
  return Problem(f"{a}{op}{b}=", str(OPS[op](a, b)), op, max(len(str(a)), len(str(b))))


def _operand(rng: random.Random, digits: int) -> int:
  lo = 0 if digits == 1 else 10 ** (digits - 1)
  return rng.randrange(lo, 10 ** digits)


def make_problems(n: int, digits: int, ops: Sequence[str] = ("+",), seed: int = 0) -> list[Problem]:
  """n problems with `digits`-digit operands and an operation drawn from `ops`, the same list for
  the same arguments on every machine (random.Random is specified to be reproducible)."""
  if digits < 1:
    raise ValueError(f"digits must be >= 1, got {digits}")
  if not ops or any(op not in OPS for op in ops):
    raise ValueError(f"ops must be a non-empty subset of {list(OPS)}, got {list(ops)}")
  rng = random.Random(f"arithmetic:{seed}:{digits}:{''.join(ops)}")
  return [make_problem(_operand(rng, digits), _operand(rng, digits), rng.choice(list(ops)))
          for _ in range(n)]


def held_out(problem: Problem, fraction: float) -> bool:
  """Whether the problem belongs to the held-out share `fraction`, by a hash of its prompt."""
  h = int(hashlib.sha1(problem.prompt.encode()).hexdigest()[:8], 16)
  return h < fraction * 16**8


def heldout_part(problem: Problem) -> str:
  """"validation" or "test", half each, for a held-out problem: by another part of its prompt's
  hash than held_out reads, so the halves are independent of the held-out fraction. Settings are
  chosen on validation and results reported on test."""
  h = int(hashlib.sha1(problem.prompt.encode()).hexdigest()[8:16], 16)
  return "validation" if h % 2 == 0 else "test"


def split(problems: Iterable[Problem], fraction: float = 0.2) -> tuple[list[Problem], list[Problem]]:
  """(train, held_out): every problem goes to one side by held_out(problem, fraction)."""
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"the held-out fraction must be in [0, 1], got {fraction}")
  train_set, held_set = [], []
  for p in problems:
    (held_set if held_out(p, fraction) else train_set).append(p)
  return train_set, held_set


def spaced(text: str) -> str:
  """' 1 2 + 3 5 =' from '12+35=': a space before every character."""
  return "".join(" " + ch for ch in text)


def render(problem: Problem, spaced_digits: bool = True) -> tuple[str, str]:
  """(prompt, answer) as the model reads and writes them; prompt + answer is the training line."""
  if spaced_digits:
    return spaced(problem.prompt), spaced(problem.answer)
  return problem.prompt, problem.answer


def normalise(text: str) -> str:
  """An answer compared as digits only: spacing and surrounding whitespace do not count."""
  return "".join(text.split())


def documents(problems: Sequence[Problem], per_document: int, spaced_digits: bool = True) -> list[str]:
  """Training text: `per_document` problems per document, one per line."""
  docs = []
  for i in range(0, len(problems), per_document):
    lines = ["".join(render(p, spaced_digits)) for p in problems[i:i + per_document]]
    docs.append("\n".join(lines) + "\n")
  return docs
