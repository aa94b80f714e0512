"""The data of the alignment stages: prompts with answers (SFT, GRPO, evaluation) and preference
pairs (DPO), from the built-in arithmetic task or the user's JSONL, tokenized into fixed shapes.

User formats, one JSON object per line:
  SFT, GRPO and evaluation  {"prompt": "12+35=", "answer": "47"}
  DPO                       {"prompt": "12+35=", "chosen": "47", "rejected": "48"}
A malformed file stops the run with one line naming the file, the line and the field.

A completion is its text followed by end-of-text, so the model learns where to stop and greedy
decoding ends there. Prompt and completion are tokenized separately and concatenated: that is
what generation sees (the prompt alone, then the sampled tokens), even when a BPE would merge
across the boundary of the joined text.

Batches are a deterministic function of the step (a fresh seeded permutation per epoch), so a
resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import dataclasses
import os
import random
from typing import NamedTuple, Sequence

import numpy as np
from tokenizers import Tokenizer

from train import files
from train.data import tokenizer as tokenizer_lib


DataError = files.DataError  # the one of train.data.pipeline too: a caller catches either name

@dataclasses.dataclass(frozen=True)
class Prompted:
  prompt: str
  answer: str


@dataclasses.dataclass(frozen=True)
class Pair:
  prompt: str
  chosen: str
  rejected: str


# ---------------------------------------------------------------------------------------------
# Reading: the generator or JSONL.


def read_jsonl(path: str, fields: Sequence[str]) -> list[dict]:
  """Rows of a JSONL file, each a dict with string values for `fields` (other keys ignored)."""
  if not os.path.exists(path):
    raise DataError(f"{path}: no such file")
  rows = []
  for n, row in files.iter_jsonl(path):
    if not isinstance(row, dict):
      raise DataError(f"{path}:{n}: expected a JSON object with fields {list(fields)}")
    for name in fields:
      if name not in row:
        raise DataError(f"{path}:{n}: missing field {name!r}")
      if not isinstance(row[name], str):
        raise DataError(f"{path}:{n}: field {name!r} must be a string, got {row[name]!r}")
    if not row["prompt"]:
      raise DataError(f"{path}:{n}: field 'prompt' is empty")
    rows.append({name: row[name] for name in fields})
  if not rows:
    raise DataError(f"{path}: holds no examples")
  return rows


SPLITS = ("train", "validation", "test")  # "heldout" is read as "test", its name before the split


def _split_size(task, split: str) -> int:
  return {"train": task.n_train, "validation": task.n_validation, "test": task.n_heldout}[split]


def task_problems(task, split: str) -> list:
  """The arithmetic task's train, validation or test problems (train/data/arithmetic.py), unique,
  in draw order: task.n_train, task.n_validation and task.n_heldout of them.

  Problems are drawn from one seeded stream and sent to a side by arithmetic.split (a hash of
  the prompt), the held-out side halved into validation and test by arithmetic.heldout_part
  (another part of the hash), so each set is the same whatever the other sizes are, and the
  three never overlap.
  """
  from train.data import arithmetic

  split = "test" if split == "heldout" else split
  if split not in SPLITS:
    raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
  want = _split_size(task, split)
  space = len(task.ops) * (10 ** task.digits) ** 2  # an upper bound on distinct prompts
  n = 2 * (task.n_train + task.n_heldout + task.n_validation)
  while True:
    problems = arithmetic.make_problems(n, task.digits, tuple(task.ops), task.seed)
    train_side, held_side = arithmetic.split(problems, task.heldout_fraction)
    side = train_side if split == "train" else [
        p for p in held_side if arithmetic.heldout_part(p) == split]
    unique = list({p.prompt: p for p in side}.values())
    if len(unique) >= want:
      return unique[:want]
    if n > 20 * space:
      setting = {"train": "n_train", "validation": "n_validation", "test": "n_heldout"}[split]
      raise DataError(
          f"task.digits={task.digits} with task.ops={task.ops!r} has only {len(unique)} distinct "
          f"{split} problems, fewer than the {want} asked for; lower task.{setting}")
    n *= 2


def task_examples(task, split: str) -> list[Prompted]:
  """Prompts with answers of the task's `split`, rendered as config.task.spaced_digits says."""
  from train.data import arithmetic

  return [Prompted(*arithmetic.render(p, task.spaced_digits)) for p in task_problems(task, split)]


def wrong_answer(answer: str, rng: random.Random) -> str:
  """A near miss: the right number moved by +-1, +-2 or +-10^k (k < its digit count).

  Near misses are the informative negatives for DPO: a far-off string is already improbable,
  so the pair would teach the policy nothing it does not know.
  """
  value = int(answer)
  digits = len(str(abs(value)))
  deltas = [1, 2] + [10 ** k for k in range(1, digits)]
  return str(value + rng.choice([-1, 1]) * rng.choice(deltas))


def task_pairs(task, seed: int) -> list[Pair]:
  """One preference pair per training problem: chosen the answer, rejected a near miss."""
  from train.data import arithmetic

  rng = random.Random(seed)
  pairs = []
  for p in task_problems(task, "train"):
    prompt, chosen = arithmetic.render(p, task.spaced_digits)
    wrong = wrong_answer(p.answer, rng)
    pairs.append(Pair(prompt, chosen, arithmetic.spaced(wrong) if task.spaced_digits else wrong))
  return pairs


def load_examples(path: str, task, split: str) -> list[Prompted]:
  """Prompts with answers: the user's JSONL at `path`, or the task's `split` when path is ''."""
  if not path:
    return task_examples(task, split)
  return [Prompted(r["prompt"], r["answer"]) for r in read_jsonl(path, ("prompt", "answer"))]


def heldout_examples(data_settings, task) -> tuple[list[Prompted], list[Prompted]]:
  """(validation, test) examples of a stage: a run's choices read validation (SFT's early stop,
  the eval/accuracy curve), its reported accuracy is test's.

  data.eval_path and data.validation_path set: each file; eval_path alone: its rows halved by a
  hash of the prompt (as the task's held-out problems are); neither: the task's splits.
  DataError when the two share a prompt or a half is empty."""
  from train.data import arithmetic

  if not data_settings.eval_path:
    if data_settings.validation_path:
      raise DataError("data.validation_path is set without data.eval_path (the test set); set "
                      "both, or neither to use the task")
    return task_examples(task, "validation"), task_examples(task, "test")
  test = load_examples(data_settings.eval_path, task, "test")
  if data_settings.validation_path:
    val = load_examples(data_settings.validation_path, task, "validation")
    shared = {e.prompt for e in val} & {e.prompt for e in test}
    if shared:
      raise DataError(f"{data_settings.validation_path} and {data_settings.eval_path} share the "
                      f"prompt {sorted(shared)[0]!r}: validation and test must not overlap")
    return val, test
  part = lambda e: arithmetic.heldout_part(arithmetic.Problem(e.prompt, e.answer, "", 0))  # noqa: E731
  val = [e for e in test if part(e) == "validation"]
  test = [e for e in test if part(e) == "test"]
  if not val or not test:
    raise DataError(f"{data_settings.eval_path}: too few examples to halve into validation and "
                    "test; add examples or set data.validation_path")
  return val, test


def load_pairs(path: str, task, seed: int) -> list[Pair]:
  """Preference pairs: the user's JSONL at `path`, or pairs made from the task when path is ''."""
  if not path:
    return task_pairs(task, seed)
  return [Pair(r["prompt"], r["chosen"], r["rejected"])
          for r in read_jsonl(path, ("prompt", "chosen", "rejected"))]


# ---------------------------------------------------------------------------------------------
# Tokenizing into fixed shapes: one shape per run means one compilation.


class Sequences(NamedTuple):
  """Prompt + completion + end-of-text, right-padded; the model reads inputs and predicts targets.

  mask_NxT is 1.0 where the target is a completion token (its end-of-text included) and 0.0 on
  prompt and padding targets.
  """

  inputs_NxT: np.ndarray
  targets_NxT: np.ndarray
  mask_NxT: np.ndarray


class Prompts(NamedTuple):
  """Right-padded prompts for the sampler; lengths_N >= 1."""

  tokens_NxP: np.ndarray
  lengths_N: np.ndarray


def token_ids(tok: Tokenizer, prompts: Sequence[str], completions: Sequence[str]):
  """(prompt ids, completion ids + end-of-text) per example."""
  eot = tokenizer_lib.special_id(tok, tokenizer_lib.EOT)
  p_ids = [tokenizer_lib.encode(tok, p) for p in prompts]
  c_ids = [tokenizer_lib.encode(tok, c) + [eot] for c in completions]
  return p_ids, c_ids


def pack(p_ids: Sequence[Sequence[int]], c_ids: Sequence[Sequence[int]], length: int,
         pad_id: int) -> Sequences:
  """Sequences of `length` targets from token ids; raises DataError when one does not fit."""
  n = len(p_ids)
  inputs = np.full((n, length), pad_id, np.int32)
  targets = np.full((n, length), pad_id, np.int32)
  mask = np.zeros((n, length), np.float32)
  for i, (p, c) in enumerate(zip(p_ids, c_ids)):
    seq = list(p) + list(c)
    if len(seq) - 1 > length:
      raise DataError(
          f"example {i} has {len(seq)} tokens, more than the {length + 1} the run allows")
    inputs[i, :len(seq) - 1] = seq[:-1]
    targets[i, :len(seq) - 1] = seq[1:]
    # target j is token j + 1: a completion token when j + 1 >= len(p)
    mask[i, len(p) - 1:len(seq) - 1] = 1.0
  return Sequences(inputs, targets, mask)


def needed_length(p_ids, c_ids) -> int:
  """Targets needed by the longest example (its tokens minus one)."""
  return max(len(p) + len(c) for p, c in zip(p_ids, c_ids)) - 1


def encode_prompts(tok: Tokenizer, prompts: Sequence[str], length: int) -> Prompts:
  ids = [tokenizer_lib.encode(tok, p) for p in prompts]
  if any(not x for x in ids):
    raise DataError("every prompt needs at least one token")
  if max(len(x) for x in ids) > length:
    raise DataError(f"a prompt has {max(len(x) for x in ids)} tokens, more than {length}")
  pad_id = tokenizer_lib.special_id(tok, tokenizer_lib.PAD)
  tokens = np.full((len(ids), length), pad_id, np.int32)
  for i, x in enumerate(ids):
    tokens[i, :len(x)] = x
  return Prompts(tokens, np.asarray([len(x) for x in ids], np.int32))


def prompt_length(tok: Tokenizer, prompts: Sequence[str]) -> int:
  return max(len(tokenizer_lib.encode(tok, p)) for p in prompts)


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> np.ndarray:
  """Example indices of batch `step` (0-based): epochs of seeded permutations, concatenated.

  A pure function of its arguments, so resumption needs to store only the step.
  """
  start = step * batch_size
  out = []
  while len(out) < batch_size:
    epoch, offset = divmod(start + len(out), n)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    out.extend(perm[offset:offset + batch_size - len(out)].tolist())
  return np.asarray(out, np.int64)
