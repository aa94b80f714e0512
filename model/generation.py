"""Autoregressive generation with a KV cache: a batched prefill, then one compiled decode loop.

Prompts of different lengths share a batch right-padded to T: row b's prompt sits at positions
0..len_b - 1, its first generated token at position len_b. The prefill runs all T positions at
once (the padding's cache slots are masked and later overwritten, see model/kv_cache.py), reads
each row's logits at len_b - 1 and samples the first token. The decode loop is one
lax.while_loop: each iteration feeds every row's last token at its own position, samples the next
token, and stops when every row has produced end-of-text or max_new_tokens tokens.

The whole generation is one jitted pure function of (params, prompts, lengths, keys), so the
Python interpreter is out of the per-token path.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from model import kv_cache, sampling, transformer
from model.config import ModelConfig


class Generated(NamedTuple):
  """tokens_BxN: generated tokens (after a row ends, eot_id); lengths_B: how many each row made,
  its end-of-text included."""

  tokens_BxN: jax.Array
  lengths_B: jax.Array


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
  """The static shape of one generation call."""

  max_new_tokens: int
  eot_id: int
  sampling: sampling.SamplingConfig = sampling.SamplingConfig()

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


def step_keys(keys_B: jax.Array, step: jax.Array) -> jax.Array:
  """Row keys for one sampling step: a function of (row key, step) only."""
  return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_B, step)


def prefill(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    prompts_BxT: jax.Array,
    prompt_lengths_B: jax.Array,
    cache: kv_cache.KVCache,
    chunk: int = 0,
) -> tuple[jax.Array, kv_cache.KVCache]:
  """Runs the right-padded prompts through the model, filling the cache, `chunk` tokens at a time
  (0: all at once); a sliding window's ring cache needs chunks of at most the window (see
  cache_length).

  Returns each row's logits at its last prompt token (B, V) float32 and the cache.
  """
  b, t = prompts_BxT.shape
  chunk = chunk or t
  pieces = []
  for start in range(0, t, chunk):
    n = min(chunk, t - start)
    positions_BxN = jnp.broadcast_to(jnp.arange(start, start + n, dtype=jnp.int32)[None], (b, n))
    logits_BxNxV, cache = transformer.decode(
        graphdef, params, prompts_BxT[:, start:start + n], positions_BxN, cache)
    pieces.append(logits_BxNxV)
  logits_BxTxV = pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=1)
  last_Bx1x1 = (prompt_lengths_B - 1)[:, None, None]
  return jnp.take_along_axis(logits_BxTxV, last_Bx1x1, axis=1)[:, 0], cache


def cache_length(prompt_len: int, max_new_tokens: int) -> int:
  """Slots needed: the last token fed sits at position prompt_len + max_new_tokens - 2. A layer
  with a sliding window W holds a ring of kv_cache.ring_slots(W) = 2 W slots instead, however long
  the prompt and the generation, since prefill writes W tokens at a time."""
  return prompt_len + max_new_tokens


def make_generate(
    cfg: ModelConfig, graphdef: nnx.GraphDef, spec: DecodeSpec,
) -> Callable[[nnx.State, jax.Array, jax.Array, jax.Array], Generated]:
  """A jitted generate(params, prompts_BxT int32, prompt_lengths_B int32, keys_B) -> Generated.

  prompt_lengths_B must be >= 1, and T + max_new_tokens must fit cfg.max_seq_len (the caller
  checks; see experiments/generate.py).
  """
  n_new = spec.max_new_tokens

  def generate(params, prompts_BxT, prompt_lengths_B, keys_B) -> Generated:
    b, t = prompts_BxT.shape
    cache = kv_cache.init(cfg, b, cache_length(t, n_new), ring=True)
    logits_BxV, cache = prefill(graphdef, params, prompts_BxT, prompt_lengths_B, cache,
                                chunk=cfg.sliding_window)
    tok_B = sampling.sample(step_keys(keys_B, 0), logits_BxV, spec.sampling)
    out_BxN = jnp.full((b, n_new), spec.eot_id, jnp.int32).at[:, 0].set(tok_B)
    done_B = tok_B == spec.eot_id
    state = (cache, tok_B, prompt_lengths_B.astype(jnp.int32), out_BxN, jnp.ones((b,), jnp.int32),
             done_B, jnp.int32(1))

    def cond(state):
      *_, done_B, i = state
      return (i < n_new) & ~jnp.all(done_B)

    def body(state):
      cache, tok_B, pos_B, out_BxN, len_B, done_B, i = state
      logits_Bx1xV, cache = transformer.decode(
          graphdef, params, tok_B[:, None], pos_B[:, None], cache)
      new_B = sampling.sample(step_keys(keys_B, i), logits_Bx1xV[:, 0], spec.sampling)
      new_B = jnp.where(done_B, spec.eot_id, new_B)
      out_BxN = out_BxN.at[:, i].set(new_B)
      len_B = len_B + (~done_B).astype(jnp.int32)
      done_B = done_B | (new_B == spec.eot_id)
      return cache, new_B, pos_B + 1, out_BxN, len_B, done_B, i + 1

    _, _, _, out_BxN, len_B, _, _ = jax.lax.while_loop(cond, body, state)
    return Generated(out_BxN, len_B)

  return jax.jit(generate)


def pad_prompts(prompts: list[list[int]], pad_id: int) -> tuple[jax.Array, jax.Array]:
  """Right-pads token lists into (prompts_BxT int32, lengths_B int32)."""
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError("every prompt needs at least one token")
  t = max(len(p) for p in prompts)
  rows = [list(p) + [pad_id] * (t - len(p)) for p in prompts]
  return jnp.asarray(rows, jnp.int32), jnp.asarray([len(p) for p in prompts], jnp.int32)


def trim(generated: Generated) -> list[list[int]]:
  """Each row's generated tokens as a Python list (its end-of-text kept, if it made one)."""
  tokens = jax.device_get(generated.tokens_BxN)
  lengths = jax.device_get(generated.lengths_B)
  return [list(map(int, row[:n])) for row, n in zip(tokens, lengths)]
