"""Reward functions for tasks with checkable answers, pluggable and combined with weights.

A reward function maps a Sample (prompt, completion text, whether the model ended it with
end-of-text, the reference answer) to a float. Register a new one in REWARDS and name it in
config.grpo.rewards, e.g. "exact_match:1.0,format:0.1".
"""

from __future__ import annotations

import re
from typing import Callable, NamedTuple, Sequence

import numpy as np
from tokenizers import Tokenizer

from train.data import tokenizer as tokenizer_lib


class Sample(NamedTuple):
  prompt: str
  completion: str  # the generated text, end-of-text removed
  finished: bool  # the model produced end-of-text within the token budget
  answer: str


RewardFn = Callable[[Sample], float]


def sample_of(tok: Tokenizer, prompt: str, ids: Sequence[int], eot_id: int, answer: str) -> Sample:
  """A Sample from generated token ids (everything from the first end-of-text on is dropped)."""
  ids = list(ids)
  finished = eot_id in ids
  if finished:
    ids = ids[:ids.index(eot_id)]
  return Sample(prompt, tokenizer_lib.decode(tok, ids), finished, answer)


def exact_match(s: Sample) -> float:
  """1 when the completion is the answer (surrounding whitespace ignored), else 0."""
  return float(s.completion.strip() == s.answer.strip())


_INTEGER = re.compile(r"-?\d+")


def integer_format(s: Sample) -> float:
  """1 when the completion is one integer and the model stopped by itself, else 0.

  A shaping signal for arithmetic: it rewards the form of an answer whatever its value, so a
  group whose answers are all wrong still separates well-formed from rambling samples.
  """
  digits = "".join(s.completion.split())  # spaced digits (" 4 7") count as one integer
  return float(s.finished and _INTEGER.fullmatch(digits) is not None)


REWARDS: dict[str, RewardFn] = {"exact_match": exact_match, "format": integer_format}


def parse_weights(spec: str) -> dict[str, float]:
  """'exact_match:1.0,format:0.1' -> {'exact_match': 1.0, 'format': 0.1}; errors name the part."""
  weights = {}
  for part in (p.strip() for p in spec.split(",")):
    if not part:
      continue
    name, _, w = part.partition(":")
    if name not in REWARDS:
      raise ValueError(f"grpo.rewards: unknown reward {name!r}; known: {', '.join(REWARDS)}")
    try:
      weights[name] = float(w) if w else 1.0
    except ValueError:
      raise ValueError(f"grpo.rewards: weight of {name!r} is not a number: {w!r}") from None
  if not weights:
    raise ValueError("grpo.rewards names no reward; e.g. 'exact_match:1.0,format:0.1'")
  return weights


def score(samples: Sequence[Sample], weights: dict[str, float]) -> tuple[np.ndarray, dict]:
  """(weighted total per sample, float32 (N,); {name: per-sample rewards (N,)})."""
  parts = {name: np.asarray([REWARDS[name](s) for s in samples], np.float32) for name in weights}
  total = sum(w * parts[name] for name, w in weights.items())
  return np.asarray(total, np.float32), parts
