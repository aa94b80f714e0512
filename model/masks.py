"""Attention masks: which keys each query may see, and the score a hidden key gets.

Every attention implementation (model.attention's reference, model.flash, model.kernels, the
decode path in model.kv_cache) masks the same way, so the rule lives here, below all of them:
the implementations import it, and none imports another to get it.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

# A large negative number rather than -inf: a fully masked row then gives a uniform softmax instead
# of NaN, and exp(mask - max) underflows cleanly to 0.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def make_mask(
    t: int,
    s: int,
    *,
    causal: bool,
    q_positions_BxT: Optional[jax.Array] = None,
    q_segment_ids_BxT: Optional[jax.Array] = None,
    kv_segment_ids_BxS: Optional[jax.Array] = None,
    window: int = 0,
) -> Optional[jax.Array]:
  """Boolean mask (B or 1, T, S), True where a query may attend to a key, or None for no mask.

  Keys sit at positions 0..S-1. Queries sit at q_positions (default: the last T positions, so
  that T == S is ordinary causal self-attention and T < S continues a cached prefix). window > 0
  (sliding-window attention, causal only): a query at p sees the `window` keys p - window + 1..p.
  """
  mask = None
  if causal:
    if q_positions_BxT is None:
      q_positions_BxT = jnp.arange(s - t, s)[None, :]
    kv_pos = jnp.arange(s)
    mask = kv_pos[None, None, :] <= q_positions_BxT[:, :, None]
    if window:
      mask = mask & (kv_pos[None, None, :] > q_positions_BxT[:, :, None] - window)
  if q_segment_ids_BxT is not None:
    seg = q_segment_ids_BxT[:, :, None] == kv_segment_ids_BxS[:, None, :]
    mask = seg if mask is None else mask & seg
  return mask


def packed_documents(
    tokens_BxT: jax.Array, boundary_id: int, *, starts_after: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """(positions_BxT, segment_ids_BxT) of documents packed one after another into rows.

  A document starts at each `boundary_id` token (the end-of-text that llmlab's own documents
  follow, or an imported tokenizer's BOS), or right after it with starts_after (an imported
  tokenizer without BOS, whose documents follow end-of-text directly). Segment ids count the
  starts so far, so attention with them never crosses into another document; positions restart at
  0 at every start, so a document sees the positions it would see alone. A row that begins inside
  a document keeps positions 0, 1, ... for that part.
  """
  t = tokens_BxT.shape[1]
  at_BxT = tokens_BxT == boundary_id
  starts_BxT = jnp.pad(at_BxT[:, :-1], ((0, 0), (1, 0))) if starts_after else at_BxT
  segment_ids_BxT = jnp.cumsum(starts_BxT, axis=1, dtype=jnp.int32)
  idx_T = jnp.arange(t, dtype=jnp.int32)
  last_start_BxT = jax.lax.cummax(jnp.where(starts_BxT, idx_T, 0), axis=1)
  return idx_T - last_start_BxT, segment_ids_BxT
