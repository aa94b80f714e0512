"""Answer metrics for a language model: exact match, and the smooth ones beside it.

Schaeffer et al. (2023): exact match over an L-token answer behaves like p^L of the per-token
accuracy p, so it can rise sharply while the model improves smoothly. To see which, every answer
is scored four ways:
  exact_match          the greedy continuation, cut at a stop token, equals the answer
  token_accuracy       share of answer tokens the model ranks first given the gold prefix
  token_edit_distance  Levenshtein distance between greedy and gold answer tokens
  answer_logprob       log p(answer | prompt), summed over the answer tokens

Greedy decoding here recomputes the whole sequence for each new token: answers are a few tokens,
and this keeps the module independent of the KV-cache decoder. Prompts of one batch are
left-padded; padding gets segment id 0 and real tokens 1, so no real token attends to padding, and
positions count from each prompt's first real token, which makes a padded batch compute what each
prompt alone would.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from model import transformer
from train import step as step_lib


def exact_match(prediction: str, answer: str, normalise: Callable[[str], str] = str.strip) -> bool:
  return normalise(prediction) == normalise(answer)


def token_edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
  """Levenshtein distance between two token sequences (insert, delete, substitute: cost 1)."""
  prev = list(range(len(b) + 1))
  for i, x in enumerate(a, 1):
    cur = [i] + [0] * len(b)
    for j, y in enumerate(b, 1):
      cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
    prev = cur
  return prev[-1]


def _bucket(n: int, multiple: int = 16) -> int:
  return -(-n // multiple) * multiple  # few distinct shapes, so few compilations


def _left_pad(seqs: Sequence[Sequence[int]], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """(tokens, lengths): each sequence right-aligned in a row of `width`."""
  out = np.full((len(seqs), width), pad_id, np.int32)
  for i, s in enumerate(seqs):
    if len(s):
      out[i, width - len(s):] = s
  return out, np.array([len(s) for s in seqs], np.int32)


def _positions_and_segments(lengths_B: jax.Array, width: int) -> tuple[jax.Array, jax.Array]:
  """For rows whose real tokens end at column start + length - 1 (start = width - lengths, and
  generated tokens continue to the right): positions from 0 at the first real token, segment 1
  for real tokens and what follows them, 0 for the left padding."""
  col_W = jnp.arange(width)
  start_Bx1 = (width - lengths_B)[:, None]
  positions_BxW = jnp.maximum(col_W[None] - start_Bx1, 0)
  segments_BxW = (col_W[None] >= start_Bx1).astype(jnp.int32)
  return positions_BxW, segments_BxW


@functools.partial(jax.jit, static_argnums=(0, 4))
def _greedy(graphdef, params, tokens_BxW, prompt_len_B, n_new: int):
  """Appends n_new argmax tokens after prompts right-aligned at column W - n_new - 1."""
  b, w = tokens_BxW.shape
  p = w - n_new  # prompts occupy columns [p - len, p)
  positions, segments = _positions_and_segments(prompt_len_B + n_new, w)

  def step(i, tokens):
    logits_BxWxV = transformer.apply(graphdef, params, tokens, positions, segments)
    next_B = jnp.argmax(jax.lax.dynamic_index_in_dim(logits_BxWxV, p - 1 + i, 1, False), -1)
    return jax.lax.dynamic_update_index_in_dim(tokens, next_B.astype(tokens.dtype), p + i, 1)

  return jax.lax.fori_loop(0, n_new, step, tokens_BxW)[:, p:]


def greedy_continuations(
    graphdef, params, prompts: Sequence[Sequence[int]], max_new_tokens: Union[int, Sequence[int]],
    *, pad_id: int, stop_ids: Sequence[int] = (), batch_size: int = 64,
) -> list[list[int]]:
  """The greedy continuation of each prompt: up to max_new_tokens tokens (one number for all, or
  one per prompt), cut before the first token in stop_ids."""
  limits = ([max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int)
            else list(max_new_tokens))
  n_new = max(limits)
  stops = set(stop_ids)
  width = _bucket(max(len(p) for p in prompts)) + n_new
  out = []
  for i in range(0, len(prompts), batch_size):
    chunk = list(prompts[i:i + batch_size])
    rows = chunk + [chunk[0]] * (batch_size - len(chunk))  # a fixed batch: one compilation
    tokens, lengths = _left_pad(rows, width - n_new, pad_id)
    tokens = np.concatenate([tokens, np.full((batch_size, n_new), pad_id, np.int32)], 1)
    new_BxM = np.asarray(_greedy(graphdef, params, jnp.asarray(tokens), jnp.asarray(lengths), n_new))
    for row, limit in zip(new_BxM[:len(chunk)].tolist(), limits[i:i + batch_size]):
      row = row[:limit]
      cut = next((j for j, t in enumerate(row) if t in stops), len(row))
      out.append(row[:cut])
  return out


@functools.partial(jax.jit, static_argnums=(0,))
def _teacher_forced(graphdef, params, tokens_BxW, lengths_B, answer_len_B):
  """(log-prob of each token given its prefix, whether it is the argmax), both (B, W - 1)."""
  w = tokens_BxW.shape[1]
  positions, segments = _positions_and_segments(lengths_B, w)
  logits = transformer.apply(graphdef, params, tokens_BxW[:, :-1], positions[:, :-1], segments[:, :-1])
  targets_BxT = tokens_BxW[:, 1:]
  logp_BxT = step_lib.token_logps(logits, targets_BxT)
  correct_BxT = jnp.argmax(logits.astype(jnp.float32), -1) == targets_BxT
  # Answers are the last answer_len tokens of each row: target columns [W - 1 - len, W - 1).
  col_T = jnp.arange(w - 1)
  in_answer_BxT = col_T[None] >= (w - 1 - answer_len_B)[:, None]
  return (jnp.sum(jnp.where(in_answer_BxT, logp_BxT, 0.0), -1),
          jnp.sum(in_answer_BxT & correct_BxT, -1))


def teacher_forced_scores(
    graphdef, params, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], *,
    pad_id: int, batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
  """(answer log-likelihood, per-token accuracy) of each answer after its prompt."""
  if any(len(a) == 0 for a in answers):
    raise ValueError("every answer needs at least one token")
  seqs = [list(p) + list(a) for p, a in zip(prompts, answers)]
  width = _bucket(max(len(s) for s in seqs))
  logps, accs = [], []
  for i in range(0, len(seqs), batch_size):
    chunk = seqs[i:i + batch_size]
    n_ans = [len(a) for a in answers[i:i + batch_size]]
    pad = batch_size - len(chunk)
    tokens, lengths = _left_pad(chunk + [chunk[0]] * pad, width, pad_id)
    logp, n_correct = _teacher_forced(graphdef, params, jnp.asarray(tokens), jnp.asarray(lengths),
                                      jnp.asarray(n_ans + [n_ans[0]] * pad, jnp.int32))
    logps.extend(np.asarray(logp)[:len(chunk)].tolist())
    accs.extend((np.asarray(n_correct)[:len(chunk)] / np.array(n_ans)).tolist())
  return np.array(logps), np.array(accs)


def score_answers(
    graphdef, params, tok, prompts: Sequence[str], answers: Sequence[str], *, pad_id: int,
    stop_ids: Sequence[int], normalise: Callable[[str], str] = str.strip,
    extra_new_tokens: int = 1, batch_size: int = 64, encode: Optional[Callable] = None,
) -> dict[str, np.ndarray]:
  """All four metrics for each (prompt, answer) text pair, as arrays of one value per example.

  Greedy decoding runs for each answer's token count plus extra_new_tokens, so a model that
  would go on writing past the answer is caught, by the same margin for every answer length;
  generation is cut at stop_ids.
  """
  from train.data import tokenizer as tokenizer_lib

  encode = encode or (lambda text: tokenizer_lib.encode(tok, text))
  prompt_ids = [encode(p) for p in prompts]
  answer_ids = [encode(a) for a in answers]
  limits = [len(a) + extra_new_tokens for a in answer_ids]
  generated = greedy_continuations(graphdef, params, prompt_ids, limits, pad_id=pad_id,
                                   stop_ids=stop_ids, batch_size=batch_size)
  logp, acc = teacher_forced_scores(graphdef, params, prompt_ids, answer_ids, pad_id=pad_id,
                                    batch_size=batch_size)
  texts = [tokenizer_lib.decode(tok, g) for g in generated]
  return {
      "exact_match": np.array([exact_match(t, a, normalise) for t, a in zip(texts, answers)], float),
      "token_accuracy": acc,
      "token_edit_distance": np.array(
          [token_edit_distance(g, a) for g, a in zip(generated, answer_ids)], float),
      "answer_logprob": logp,
      "answer_tokens": np.array([len(a) for a in answer_ids], float),
  }


def stop_token_ids(tok, extra: Sequence[str] = ("\n",)) -> list[int]:
  """End-of-text and every token whose text contains one of `extra` (a newline ends an answer)."""
  from train.data import tokenizer as tokenizer_lib

  ids = [tokenizer_lib.special_id(tok, tokenizer_lib.EOT)]
  for token, idx in tok.get_vocab().items():
    text = tok.decode([idx])
    if any(e in text for e in extra):
      ids.append(idx)
  return sorted(set(ids))
