"""The key/value cache: per-layer keys and values preallocated for (batch, max_len), written in
place, and the attention of new queries over it.

Layout: per layer, keys (B*K, Dh, S) and values (B*K, S, Dh): B rows times K key/value heads
(row-major: row b's heads are b*K..b*K+K-1), S = max_len slots (one per absolute position), Dh
head dim. Stacked along a leading L axis when the model scans its layers, else a tuple of L
buffers, one per layer like the weights. Each buffer is the operand of its matmul exactly as it
lies in memory (scores = q @ K with K as Dh x S, out = probs @ V with V as S x Dh, batched over
B*K), so a decode step reads the cache once, in place. Measured on XLA CPU, the alternatives
cost whole-cache copies at every layer of every step: with the (B, S, K, Dh) of
model/attention.py it transposes the cache before multiplying, and with separate B and K axes
it fuses the in-place update into the matmul as a second, copied version of the cache.

A token at position p writes slot p mod S; a query at position p attends to the slots holding
positions 0..p (p - W + 1..p with a sliding window of W), so slots past a row's current length
are never read before they are written again. That makes three things free:
  - prompts of different lengths share one batch (right-padded; the padding's slots are masked,
    then overwritten by the first generated tokens);
  - rollback (speculative decoding) is only moving a row's length back: the rejected tokens'
    slots are stale but masked, and the next accepted token overwrites them;
  - with a sliding window the cache is a ring buffer: S >= W + T - 1 slots serve any length when
    at most T tokens are written at once, because a write of T tokens overwrites only positions
    that every query of the chunk sees outside its window (generation: T = W, S = 2 W).
Which position a slot holds follows from the chunk's last position (slot_positions), so the
cache stores no lengths; the decode loops keep each row's position themselves. A write of T
tokens must not wrap past slot S - 1 (generation's prefill chunks start at multiples of W, and S
is one; later writes are one token), and a cache without a window needs a slot for every
position.

Size per sequence: 2 (k and v) * layers * n_kv_heads * head_dim * length * bytes per element, so
GQA and MQA shrink it by n_heads / n_kv_heads against MHA.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from model import primitives
from model.config import ModelConfig
from model.masks import MASK_VALUE


class KVCache(NamedTuple):
  """Keys and values of every layer; a pytree, so it is a loop carry and a scan xs/ys.

  Keys: one (L, B*K, Dh, S) array, or a tuple of L (B*K, Dh, S) arrays; values likewise with
  (S, Dh) in place of (Dh, S).
  """

  k_LxBKxDhxS: Any
  v_LxBKxSxDh: Any

  @property
  def max_len(self) -> int:
    """Slots of the largest layer (a sliding window's ring layers may hold fewer)."""
    return max(v.shape[-2] for v in jax.tree.leaves(self.v_LxBKxSxDh))

  @property
  def nbytes(self) -> int:
    return int(sum(x.nbytes for x in jax.tree.leaves(self)))


def ring_slots(window: int) -> int:
  """Slots of a sliding window's ring when prompts are written `window` tokens at a time (model/
  generation.py): the window plus the largest write, rounded up to a multiple of the write so that
  no write wraps past the end."""
  return 2 * window


def init(cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None, *,
         ring: bool = False) -> KVCache:
  """A zeroed cache for `batch` sequences of up to `max_len` tokens, in the compute dtype,
  laid out like the model's layers (stacked with scan_layers, else one buffer per layer).

  ring: each layer with a sliding window gets min(max_len, ring_slots(window)) slots instead,
  for callers that write at most `window` tokens at a time (generation); layers that attend
  globally (model.global_every) keep max_len.

  Latent attention (model/mla.py) caches one (Dc + Dr) vector per token in the keys' buffer,
  laid out (B, Dc + Dr, S) like one key head, and nothing in the values' (zero-width) buffer.
  """
  dtype = cfg.compute_dtype if dtype is None else dtype

  def shapes(window: int):
    s = min(max_len, ring_slots(window)) if ring and window else max_len
    if cfg.kv_lora_rank:
      return (batch, cfg.kv_lora_rank + cfg.qk_rope_head_dim, s), (batch, s, 0)
    return (batch * cfg.n_kv_heads, cfg.head_dim, s), (batch * cfg.n_kv_heads, s, cfg.head_dim)

  if cfg.scan_layers:  # one window for every layer (config.py refuses a pattern here)
    k_shape, v_shape = shapes(cfg.sliding_window)
    return KVCache(jnp.zeros((cfg.n_layers, *k_shape), dtype),
                   jnp.zeros((cfg.n_layers, *v_shape), dtype))
  per_layer = [shapes(cfg.layer_window(i)) for i in range(cfg.n_layers)]
  return KVCache(tuple(jnp.zeros(k, dtype) for k, _ in per_layer),
                 tuple(jnp.zeros(v, dtype) for _, v in per_layer))


def bytes_per_sequence(cfg: ModelConfig, length: int, dtype: Any = None) -> int:
  """2 * layers * n_kv_heads * head_dim * length * bytes per element; with latent attention
  layers * (kv_lora_rank + qk_rope_head_dim) * length * bytes per element."""
  dtype = cfg.compute_dtype if dtype is None else dtype
  itemsize = np.dtype(dtype).itemsize
  if cfg.kv_lora_rank:
    return cfg.n_layers * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * length * itemsize
  return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * length * itemsize


def _write_rows(cache: jax.Array, new: jax.Array, start_B: jax.Array, slot_axis: int) -> jax.Array:
  """Row b's (K, ...) block of `new` into cache[b*K:(b+1)*K] at slots start_B[b].., in place.

  One dynamic_update_slice per row (a loop over rows when B > 1). Written as a scatter with
  per-row indices instead, XLA on CPU copies the whole cache at every step. The start is clamped
  so that the T slots fit (dynamic_update_slice semantics): callers allocate enough slots
  (generation.cache_length).
  """
  kv = new.shape[0] // start_B.shape[0]

  def start(b):
    idx = [b * kv, jnp.int32(0), jnp.int32(0)]
    idx[slot_axis] = start_B[b]
    return tuple(idx)

  if start_B.shape[0] == 1:
    return jax.lax.dynamic_update_slice(cache, new, start(0))

  def one_row(b, cache):
    block = jax.lax.dynamic_slice_in_dim(new, b * kv, kv, axis=0)
    return jax.lax.dynamic_update_slice(cache, block, start(b))

  return jax.lax.fori_loop(0, start_B.shape[0], one_row, cache)


def write_keys(k_BKxDhxS: jax.Array, new_BxTxKxDh: jax.Array, start_B: jax.Array) -> jax.Array:
  """Writes row b's T new keys (positions start_B[b]..) into their slots of one layer's keys,
  in place."""
  b, t, kv, dh = new_BxTxKxDh.shape
  new_BKxDhxT = new_BxTxKxDh.transpose(0, 2, 3, 1).reshape(b * kv, dh, t)
  slots_B = start_B % k_BKxDhxS.shape[2]
  return _write_rows(k_BKxDhxS, new_BKxDhxT.astype(k_BKxDhxS.dtype), slots_B, slot_axis=2)


def write_values(v_BKxSxDh: jax.Array, new_BxTxKxDh: jax.Array, start_B: jax.Array) -> jax.Array:
  """Writes row b's T new values (positions start_B[b]..) into their slots, in place."""
  b, t, kv, dh = new_BxTxKxDh.shape
  new_BKxTxDh = new_BxTxKxDh.transpose(0, 2, 1, 3).reshape(b * kv, t, dh)
  slots_B = start_B % v_BKxSxDh.shape[1]
  return _write_rows(v_BKxSxDh, new_BKxTxDh.astype(v_BKxSxDh.dtype), slots_B, slot_axis=1)


def slot_positions(q_positions_BxT: jax.Array, s: int) -> jax.Array:
  """(B, S): the position each slot holds once the chunk at q_positions is written: the newest
  position p' <= the chunk's last with p' = slot mod S (negative: never written)."""
  last_Bx1 = jnp.max(q_positions_BxT, axis=1, keepdims=True)
  return last_Bx1 - (last_Bx1 - jnp.arange(s)[None, :]) % s


def _visible(q_positions_BxT: jax.Array, s: int, window: int) -> jax.Array:
  """(B, T, S): slot visible to each query (causal, within the window, ever written)."""
  held_Bx1xS = slot_positions(q_positions_BxT, s)[:, None, :]
  q_BxTx1 = q_positions_BxT[:, :, None]
  visible_BxTxS = (held_Bx1xS <= q_BxTx1) & (held_Bx1xS >= 0)
  if window:
    visible_BxTxS = visible_BxTxS & (held_Bx1xS > q_BxTx1 - window)
  return visible_BxTxS


def attend_latent(q_BxTxHxC: jax.Array, latents_BxCxS: jax.Array, q_positions_BxT: jax.Array,
                  n_value: int, *, scale: float, window: int = 0,
                  softcap: float = 0.0) -> jax.Array:
  """Latent attention's decode (model/mla.py): each of the H query heads, mapped into latent
  space (C = Dc + Dr), against every cached latent; returns the softmax-weighted sum of the first
  n_value (= Dc) latent dims, (B, T, H, Dc). The H heads and T queries are the rows of one matmul
  per batch row, over the cache as it lies in memory."""
  b, t, h, c = q_BxTxHxC.shape
  s = latents_BxCxS.shape[-1]
  scores_BxTHxS = jnp.einsum("bqc,bcs->bqs", q_BxTxHxC.reshape(b, t * h, c), latents_BxCxS,
                             preferred_element_type=jnp.float32) * scale
  scores_BxTHxS = primitives.softcap(scores_BxTHxS, softcap)
  visible_BxTx1xS = _visible(q_positions_BxT, s, window)[:, :, None, :]
  scores_BxTxHxS = jnp.where(visible_BxTx1xS, scores_BxTHxS.reshape(b, t, h, s), MASK_VALUE)
  probs_BxTHxS = jax.nn.softmax(scores_BxTxHxS, axis=-1).reshape(b, t * h, s)
  out_BxTHxDc = jnp.einsum("bqs,bcs->bqc", probs_BxTHxS.astype(latents_BxCxS.dtype),
                           latents_BxCxS[:, :n_value])
  return out_BxTHxDc.reshape(b, t, h, n_value)


def attend(
    q_BxTxHxDh: jax.Array,
    k_BKxDhxS: jax.Array,
    v_BKxSxDh: jax.Array,
    q_positions_BxT: jax.Array,
    window: int = 0,
    *,
    scale: Optional[float] = None,
    softcap: float = 0.0,
) -> jax.Array:
  """Causal attention of T queries at q_positions over all S cache slots: (B, T, H, Dh).
  window > 0: a query at p sees slots p - window + 1..p only (sliding-window attention).
  scale: the scores' scale, None = 1/sqrt(Dh); softcap > 0: capped scores, as in training.

  The same maths as model/attention.reference_attention (float32 softmax, slot s visible to a
  query at position p iff s <= p, G = H / K query heads per cache head), on this layout: the
  G heads of a group and the T queries are the rows of one matmul per (row, cache head).
  """
  b, t, h, dh = q_BxTxHxDh.shape
  s = v_BKxSxDh.shape[1]
  kv = v_BKxSxDh.shape[0] // b
  g = h // kv
  q_BKxTGxDh = (q_BxTxHxDh.reshape(b, t, kv, g, dh).transpose(0, 2, 1, 3, 4)
                .reshape(b * kv, t * g, dh))
  scores_BKxTGxS = jnp.einsum(
      "nqd,nds->nqs", q_BKxTGxDh, k_BKxDhxS, preferred_element_type=jnp.float32)
  scores_BxKxTxGxS = primitives.softcap(
      scores_BKxTGxS.reshape(b, kv, t, g, s) * (dh ** -0.5 if scale is None else scale), softcap)
  visible_BxTxS = _visible(q_positions_BxT, s, window)
  scores_BxKxTxGxS = jnp.where(visible_BxTxS[:, None, :, None, :], scores_BxKxTxGxS, MASK_VALUE)
  probs_BKxTGxS = jax.nn.softmax(scores_BxKxTxGxS, axis=-1).reshape(b * kv, t * g, s)
  out_BKxTGxDh = jnp.einsum("nqs,nsd->nqd", probs_BKxTGxS.astype(v_BKxSxDh.dtype), v_BKxSxDh)
  out_BxTxKxGxDh = out_BKxTGxDh.reshape(b, kv, t, g, dh).transpose(0, 2, 1, 3, 4)
  return out_BxTxKxGxDh.reshape(b, t, h, dh).astype(q_BxTxHxDh.dtype)
