"""The key/value cache: per-layer keys and values preallocated for (batch, max_len), written in place.

Layout: k and v of shape (L, B, S, K, Dh), L layers, S = max_len slots, one slot per absolute
position; stacked along L when the model scans its layers, else a tuple of L (B, S, K, Dh)
buffers, one per layer like the weights. A token at position p writes slot p; a query at position p attends to slots 0..p (the
causal mask of model/attention.py), so slots past a row's current length are never read before
they are written again. That makes two things free:
  - prompts of different lengths share one batch (right-padded; the padding's slots are masked,
    then overwritten by the first generated tokens);
  - rollback (speculative decoding) is only moving a row's length back: the rejected tokens'
    slots are stale but masked, and the next accepted token overwrites them.
The cache therefore stores no lengths; the decode loops keep each row's position themselves.

Size per sequence: 2 (k and v) * layers * n_kv_heads * head_dim * length * bytes per element, so
GQA and MQA shrink it by n_heads / n_kv_heads against MHA.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from model.config import ModelConfig


class KVCache(NamedTuple):
  """Keys and values of every layer; a pytree, so it is a loop carry and a scan xs/ys.

  Each field is one (L, B, S, K, Dh) array, or a tuple of L (B, S, K, Dh) arrays.
  """

  k_LxBxSxKxDh: Any
  v_LxBxSxKxDh: Any

  @property
  def max_len(self) -> int:
    return jax.tree.leaves(self.k_LxBxSxKxDh)[0].shape[-3]

  @property
  def nbytes(self) -> int:
    return int(sum(x.nbytes for x in jax.tree.leaves(self)))


def init(cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None) -> KVCache:
  """A zeroed cache for `batch` sequences of up to `max_len` tokens, in the compute dtype,
  laid out like the model's layers (stacked with scan_layers, else one buffer per layer)."""
  dtype = cfg.compute_dtype if dtype is None else dtype
  shape = (batch, max_len, cfg.n_kv_heads, cfg.head_dim)
  if cfg.scan_layers:
    shape = (cfg.n_layers, *shape)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
  per_layer = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(cfg.n_layers))
  return KVCache(per_layer(), per_layer())


def bytes_per_sequence(cfg: ModelConfig, length: int, dtype: Any = None) -> int:
  """2 * layers * n_kv_heads * head_dim * length * bytes per element."""
  dtype = cfg.compute_dtype if dtype is None else dtype
  itemsize = np.dtype(dtype).itemsize
  return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * length * itemsize


def write(
    cache_BxSxKxDh: jax.Array, new_BxTxKxDh: jax.Array, positions_BxT: jax.Array) -> jax.Array:
  """Writes new[b, t] into slot positions[b, t] of one layer's keys (or values), in place.

  Positions past the end of the cache are dropped rather than clamped: a clamped write would
  overwrite a valid slot (dynamic_update_slice clamps its start index).
  """
  b = cache_BxSxKxDh.shape[0]
  rows_Bx1 = jnp.arange(b)[:, None]
  return cache_BxSxKxDh.at[rows_Bx1, positions_BxT].set(
      new_BxTxKxDh.astype(cache_BxSxKxDh.dtype), mode="drop")
