"""Synthetic key-value retrieval (Liu et al. 2023, "Lost in the Middle", section 3).

An example is k pairs of random keys and values, then a query key; the answer is the value paired
with it. The gold pair's position (0 = first) is chosen by the caller, so accuracy can be measured
against position. With query_before the query is also written before the pairs, Liu et al.'s
query-aware contextualisation.

Text: " 37 81 12 65 44 99 ? 12" -> " 65", and with the query before:
" ? 12 | 37 81 12 65 44 99 ? 12". Keys are the numbers 10..54 and values 55..99, so a number's
role is plain from its value, and a byte-level BPE trained on such text makes each " 37" one
token: a pair is two tokens, the answer one, and the answer is the token that followed the
query's earlier occurrence, which one induction head can copy. (Liu et al. use JSON with UUID keys
and values; a model of a few hundred thousand parameters needs the simplest form of the task.)

Training text asks several questions per example (" ? 12 65 ? 44 99 ..."): only the answers are
learnable (keys and values are random), so one question per example would give a small model one
useful target in a hundred tokens. Evaluation asks one question, the first.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Sequence

KEYS = tuple(range(10, 55))  # keys are distinct within an example, so k <= 45
VALUES = tuple(range(55, 100))


@dataclasses.dataclass(frozen=True)
class Example:
  keys: tuple[int, ...]
  values: tuple[int, ...]
  gold: int  # index of the queried pair
  query_before: bool = False
  more: tuple[int, ...] = ()  # pairs asked about after the first question, in training text

  @property
  def k(self) -> int:
    return len(self.keys)

  @property
  def prompt(self) -> str:
    pairs = "".join(f" {key} {value}" for key, value in zip(self.keys, self.values))
    query = self.keys[self.gold]
    head = f" ? {query} |" if self.query_before else ""
    return f"{head}{pairs} ? {query}"

  @property
  def answer(self) -> str:
    return f" {self.values[self.gold]}"

  @property
  def text(self) -> str:
    """Training text: the prompt, its answer, then the further questions with theirs."""
    more = "".join(f" ? {self.keys[i]} {self.values[i]}" for i in self.more)
    return self.prompt + self.answer + more


def make_example(rng: random.Random, k: int, gold: int, query_before: bool = False,
                 n_more: int = 0) -> Example:
  if not 1 <= k <= len(KEYS):
    raise ValueError(f"k must be in [1, {len(KEYS)}], got {k}")
  if not 0 <= gold < k:
    raise ValueError(f"the gold position must be in [0, {k}), got {gold}")
  keys = tuple(rng.sample(KEYS, k))
  values = tuple(rng.choice(VALUES) for _ in range(k))
  more = tuple(rng.sample([i for i in range(k) if i != gold], min(n_more, k - 1)))
  return Example(keys, values, gold, query_before, more)


def training_examples(n: int, k_min: int, k_max: int, seed: int,
                      query_before_fraction: float = 0.5, questions: int = 1) -> list[Example]:
  """n examples with k uniform in [k_min, k_max], the gold pair anywhere, the query also before
  the pairs in a `query_before_fraction` share of them, and up to `questions` distinct pairs
  asked about in all."""
  if not 1 <= k_min <= k_max:
    raise ValueError(f"need 1 <= k_min <= k_max, got {k_min}, {k_max}")
  rng = random.Random(f"kv-train:{seed}")
  out = []
  for _ in range(n):
    k = rng.randint(k_min, k_max)
    out.append(make_example(rng, k, rng.randrange(k), rng.random() < query_before_fraction,
                            questions - 1))
  return out


def gold_positions(k: int, n_positions: int) -> list[int]:
  """Up to n_positions gold positions spread evenly over [0, k - 1], both ends included."""
  if n_positions >= k:
    return list(range(k))
  if n_positions == 1:
    return [0]
  return sorted({round(i * (k - 1) / (n_positions - 1)) for i in range(n_positions)})


def eval_examples(n: int, k: int, gold: int, seed: int, query_before: bool = False) -> list[Example]:
  """n examples with k pairs and the gold pair at `gold`; disjoint seeds from training."""
  rng = random.Random(f"kv-eval:{seed}:{k}:{gold}:{int(query_before)}")
  return [make_example(rng, k, gold, query_before) for _ in range(n)]


def texts(examples: Sequence[Example]) -> list[str]:
  return [e.text for e in examples]


def task_items(n: int = 32, k: int = 4, seed: int = 0) -> list[dict]:
  """The items of experiments/tasks/retrieval.jsonl (the task file format of train/eval_tasks.py):
  n examples of k pairs (query after the pairs, one question; seeds apart from training's and
  eval_examples'), the gold pair of example i at position (i // 2) % k, so each kind of item asks
  about every position. Even i: multiple choice among the example's distinct values, in order of
  appearance (the distractors are the values a model that does not retrieve would copy); odd i:
  the answer generated, exact match."""
  rng = random.Random(f"kv-task:{seed}")
  items = []
  for i in range(n):
    e = make_example(rng, k, (i // 2) % k)
    if i % 2 == 0:
      choices = list(dict.fromkeys(f" {v}" for v in e.values))
      items.append({"context": e.prompt, "choices": choices, "answer": choices.index(e.answer)})
    else:
      items.append({"prompt": e.prompt, "target": e.answer})
  return items
