"""Flash attention in pure JAX: exact attention whose memory grows linearly with sequence length.

Plain attention writes the whole (T, S) score matrix. Here Q is cut into blocks of block_q rows and
K/V into blocks of block_k rows; for each query block the key blocks are visited one at a time and
the softmax is computed online (Dao et al. 2022): a running max m, a running sum l of exp(s - m)
and a running output acc, rescaled by exp(m_old - m_new) whenever the max grows. Only one
(block_q, block_k) tile of scores exists at a time.

The backward pass is a `jax.custom_vjp` that saves only O, and the log-sum-exp per query row
(lse = m + log l) and recomputes each score tile from Q, K and lse: P = exp(S - lse) is the exact
softmax, so dV = P^T dO, dS = P * (dO V^T - rowsum(dO * O)), dQ = dS K, dK = dS^T Q. No (T, S)
tensor exists in the forward or the backward pass. With a soft-cap (scores c tanh(s / c)), dS is
further multiplied by the cap's derivative 1 - (capped / c)^2, recomputed from the same tile.

Causal key blocks that lie entirely in the future of every query in a query block are never
visited: each query block loops over key blocks [0, hi) with hi computed from its largest query
position, so skipped blocks cost nothing (a while loop with a data-dependent trip count, not a
masked or `cond`-guarded tile). The backward pass visits, for each key block, the query blocks
from the first one that saw it.

q_positions (decoding against a KV cache: T small, S the cache length, per-batch positions) is
handled natively, not by falling back to reference: the causal mask is built from the positions,
and key blocks past the largest query position of the batch are skipped, so a decode step reads
only the filled part of the cache. Rows with no visible key at all are undefined (reference
averages V over every key; flash averages over the blocks it visited, or returns zeros when it
visits none); self-attention never produces such rows, since each query sees itself.

Shapes: B batch, T query length, S key length, H query heads, K key/value heads, G = H / K,
Dh head dimension. Internally queries are laid out (B, K, T, G, Dh) so that the G query heads of
one group and the block's query rows form a single matmul against their shared K/V head: GQA and
MQA never repeat K or V.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from model.masks import MASK_VALUE
from model.primitives import softcap

# Measured on a 2-core CPU (B=1, H=4, Dh=64, n=2048, forward+backward): 256 x 128 tiles were the
# fastest of 128..1024; larger tiles spill the caches, smaller ones pay more per-iteration overhead.
# A float32 score tile is then 128 KiB per query head, independent of n.
DEFAULT_BLOCK_Q = 256
DEFAULT_BLOCK_K = 128


class _Plan(NamedTuple):
  """Static facts about a call: hashable, so it can be a nondiff argument of the custom_vjp."""

  causal: bool
  block_q: int
  block_k: int
  kv_len: int  # S before padding; keys at or past it are padding and always masked
  kv_padded: bool
  window: int = 0  # sliding window: a query at p sees keys p - window + 1..p; 0 = all
  scale: float = 0.0  # the scores' scale (flash_attention fills in dh ** -0.5 when none is given)
  softcap: float = 0.0  # > 0: scores capped by softcap * tanh(s / softcap) before the mask


def round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def flash_attention(
    q_BxTxHxDh: jax.Array,
    k_BxSxKxDh: jax.Array,
    v_BxSxKxDh: jax.Array,
    *,
    causal: bool = True,
    q_positions_BxT: Optional[jax.Array] = None,
    q_segment_ids_BxT: Optional[jax.Array] = None,
    kv_segment_ids_BxS: Optional[jax.Array] = None,
    window: int = 0,
    scale: Optional[float] = None,
    softcap: float = 0.0,
    block_q: int = DEFAULT_BLOCK_Q,
    block_k: int = DEFAULT_BLOCK_K,
) -> jax.Array:
  """Blockwise attention with an online softmax; the same masks and result as reference.
  scale: None = dh ** -0.5; softcap > 0: capped scores (the backward pass differentiates the cap).

  Lengths need not be multiples of the block sizes: Q, K and V are padded to whole blocks
  internally and the padded keys masked. Returns (B, T, H, Dh) in the dtype of q.
  """
  b, t, h, dh = q_BxTxHxDh.shape
  s, kv = k_BxSxKxDh.shape[1], k_BxSxKxDh.shape[2]
  g = h // kv
  bq, bk = min(block_q, t), min(block_k, s)
  tp, sp = round_up(t, bq), round_up(s, bk)
  if window and not causal:
    raise ValueError("a sliding window needs causal attention")
  plan = _Plan(causal=causal, block_q=bq, block_k=bk, kv_len=s, kv_padded=sp != s, window=window,
               scale=float(dh ** -0.5 if scale is None else scale), softcap=float(softcap))

  q_BxKxTxGxDh = q_BxTxHxDh.reshape(b, t, kv, g, dh).transpose(0, 2, 1, 3, 4)
  k_BxKxSxDh = k_BxSxKxDh.transpose(0, 2, 1, 3)
  v_BxKxSxDh = v_BxSxKxDh.transpose(0, 2, 1, 3)
  q_BxKxTxGxDh = jnp.pad(q_BxKxTxGxDh, ((0, 0), (0, 0), (0, tp - t), (0, 0), (0, 0)))
  k_BxKxSxDh = jnp.pad(k_BxKxSxDh, ((0, 0), (0, 0), (0, sp - s), (0, 0)))
  v_BxKxSxDh = jnp.pad(v_BxKxSxDh, ((0, 0), (0, 0), (0, sp - s), (0, 0)))

  # Padded query rows copy the last real row's position and segment ("edge"), so they never widen
  # the causal key range of their block nor end up with no visible key; their output is dropped.
  positions_PxT = None  # P is B, or 1 when every batch row shares the default positions
  if causal:
    if q_positions_BxT is None:
      q_positions_BxT = jnp.arange(s - t, s)[None, :]
    positions_PxT = jnp.pad(q_positions_BxT.astype(jnp.int32), ((0, 0), (0, tp - t)), mode="edge")
  q_seg_BxT = kv_seg_BxS = None
  if q_segment_ids_BxT is not None:
    q_seg_BxT = jnp.pad(q_segment_ids_BxT.astype(jnp.int32), ((0, 0), (0, tp - t)), mode="edge")
    kv_seg_BxS = jnp.pad(kv_segment_ids_BxS.astype(jnp.int32), ((0, 0), (0, sp - s)))

  o_BxKxTxGxDh = _flash(plan, q_BxKxTxGxDh, k_BxKxSxDh, v_BxKxSxDh, positions_PxT, q_seg_BxT,
                        kv_seg_BxS)
  return o_BxKxTxGxDh[:, :, :t].transpose(0, 2, 1, 3, 4).reshape(b, t, h, dh)


def _key_block_ends(plan: _Plan, positions_PxT: Optional[jax.Array], n_q: int, n_k: int) -> jax.Array:
  """hi[i]: query block i needs key blocks [0, hi[i]); every later block is masked for all rows."""
  if positions_PxT is None:
    return jnp.full((n_q,), n_k, jnp.int32)
  last_pos_Q = positions_PxT.reshape(positions_PxT.shape[0], n_q, plan.block_q).max(axis=(0, 2))
  return jnp.clip(last_pos_Q // plan.block_k + 1, 0, n_k).astype(jnp.int32)


def _key_block_starts(plan: _Plan, positions_PxT: Optional[jax.Array], n_q: int) -> jax.Array:
  """lo[i]: with a sliding window, query block i needs no key block before lo[i] (every key there
  is more than `window` behind the block's first query); 0 otherwise. The backward pass visits
  those tiles anyway, where the mask makes them exact zeros."""
  if positions_PxT is None or not plan.window:
    return jnp.zeros((n_q,), jnp.int32)
  first_pos_Q = positions_PxT.reshape(positions_PxT.shape[0], n_q, plan.block_q).min(axis=(0, 2))
  return jnp.maximum(first_pos_Q - plan.window + 1, 0) // plan.block_k


def _tile_mask(plan, positions_Pxq, q_seg_Bxq, kv_seg_Bxc, kv_start) -> Optional[jax.Array]:
  """Boolean (B or 1, 1, q, 1, c) mask of one tile, broadcast over K and G; None if all visible."""
  kv_idx_c = kv_start + jnp.arange(plan.block_k)
  mask = None
  if plan.causal:
    mask = kv_idx_c[None, None, :] <= positions_Pxq[:, :, None]
    if plan.window:
      mask = mask & (kv_idx_c[None, None, :] > positions_Pxq[:, :, None] - plan.window)
  if plan.kv_padded:
    valid = (kv_idx_c < plan.kv_len)[None, None, :]
    mask = valid if mask is None else mask & valid
  if q_seg_Bxq is not None:
    same = q_seg_Bxq[:, :, None] == kv_seg_Bxc[:, None, :]
    mask = same if mask is None else mask & same
  return None if mask is None else mask[:, None, :, None, :]


def _vma(*xs: Optional[jax.Array]) -> frozenset:
  """The shard_map axes any of xs varies over (empty outside shard_map)."""
  axes = frozenset()
  for x in xs:
    if x is not None:
      aval = jax.typeof(x)
      manual = getattr(aval, "manual_axis_type", None)  # jax >= 0.9; older versions: aval.vma
      axes |= frozenset(manual.varying if manual is not None else getattr(aval, "vma", ()))
  return axes


def _varying(x: jax.Array, vma: frozenset) -> jax.Array:
  """x marked as varying over vma, so a loop carry starting from constants has the type the body
  gives it when this runs per device inside shard_map (e.g. data-parallel training)."""
  missing = tuple(sorted(vma - _vma(x)))
  return jax.lax.pcast(x, missing, to="varying") if missing else x


def _slice(x: Optional[jax.Array], start, size: int, axis: int) -> Optional[jax.Array]:
  return None if x is None else jax.lax.dynamic_slice_in_dim(x, start, size, axis)


def _scores(plan, q_tile, k_tile, positions, q_seg, kv_seg, kv_start):
  """Scaled (soft-capped), masked float32 scores (B, K, q, G, c) of one tile, and the cap's
  derivative d capped / d scaled = 1 - tanh^2 = 1 - (capped / cap)^2 there (None without a cap),
  taken before the mask so that masked entries stay finite."""
  s_BxKxqxGxc = jnp.einsum(
      "bkqgd,bkcd->bkqgc", q_tile, k_tile, preferred_element_type=jnp.float32) * plan.scale
  dcap_BxKxqxGxc = None
  if plan.softcap:
    s_BxKxqxGxc = softcap(s_BxKxqxGxc, plan.softcap)
    dcap_BxKxqxGxc = 1.0 - jnp.square(s_BxKxqxGxc / plan.softcap)
  mask = _tile_mask(plan, positions, q_seg, kv_seg, kv_start)
  if mask is not None:
    s_BxKxqxGxc = jnp.where(mask, s_BxKxqxGxc, MASK_VALUE)
  return s_BxKxqxGxc, dcap_BxKxqxGxc


def _forward(plan: _Plan, q, k, v, positions, q_seg, kv_seg):
  """Returns O (B, K, Tp, G, Dh) in q's dtype and lse (B, K, Tp, G) in float32."""
  b, kv, tp, g, dh = q.shape
  bq, bk = plan.block_q, plan.block_k
  n_q, n_k = tp // bq, k.shape[2] // bk
  hi_Q = _key_block_ends(plan, positions, n_q, n_k)
  lo_Q = _key_block_starts(plan, positions, n_q)

  def q_block(i, carry):
    o_buf, lse_buf = carry
    q0 = i * bq
    q_tile = _slice(q, q0, bq, 2)
    pos_tile, q_seg_tile = _slice(positions, q0, bq, 1), _slice(q_seg, q0, bq, 1)

    def k_block(j, stats):
      m, l, acc = stats
      k0 = j * bk
      s, _ = _scores(plan, q_tile, _slice(k, k0, bk, 2), pos_tile, q_seg_tile,
                     _slice(kv_seg, k0, bk, 1), k0)
      m_new = jnp.maximum(m, s.max(axis=-1))
      correction = jnp.exp(m - m_new)  # 0 on the first visit (m = -inf); s is finite, so m_new too
      p = jnp.exp(s - m_new[..., None])
      l = l * correction + p.sum(axis=-1)
      pv = jnp.einsum("bkqgc,bkcd->bkqgd", p.astype(v.dtype), _slice(v, k0, bk, 2),
                      preferred_element_type=jnp.float32)
      return m_new, l, acc * correction[..., None] + pv

    stats = (jnp.full((b, kv, bq, g), -jnp.inf, jnp.float32), jnp.zeros((b, kv, bq, g), jnp.float32),
             jnp.zeros((b, kv, bq, g, dh), jnp.float32))
    stats = tuple(_varying(x, vma) for x in stats)
    m, l, acc = jax.lax.fori_loop(lo_Q[i], jnp.maximum(hi_Q[i], lo_Q[i]), k_block, stats)
    seen = l > 0  # False only for rows whose every key block was skipped
    o_tile = acc / jnp.where(seen, l, 1.0)[..., None]
    lse_tile = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), jnp.inf)  # inf: P = 0 in bwd
    o_buf = jax.lax.dynamic_update_slice_in_dim(o_buf, o_tile.astype(q.dtype), q0, 2)
    lse_buf = jax.lax.dynamic_update_slice_in_dim(lse_buf, lse_tile, q0, 2)
    return o_buf, lse_buf

  vma = _vma(q, k, v, positions, q_seg, kv_seg)
  init = (jnp.zeros(q.shape, q.dtype), jnp.zeros((b, kv, tp, g), jnp.float32))
  return jax.lax.fori_loop(0, n_q, q_block, tuple(_varying(x, vma) for x in init))


def _backward(plan: _Plan, residuals, do):
  q, k, v, positions, q_seg, kv_seg, o, lse = residuals
  bq, bk = plan.block_q, plan.block_k
  n_q, n_k = q.shape[2] // bq, k.shape[2] // bk
  scale = plan.scale
  hi_Q = _key_block_ends(plan, positions, n_q, n_k)
  # rowsum(dO * O) = sum_j P_ij dP_ij, the term the softmax Jacobian subtracts.
  delta_BxKxTxG = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)

  def k_block(j, carry):
    dq_buf, dk_buf, dv_buf = carry
    k0 = j * bk
    k_tile, v_tile, kv_seg_tile = _slice(k, k0, bk, 2), _slice(v, k0, bk, 2), _slice(kv_seg, k0, bk, 1)
    # The first query block that visited key block j in the forward pass; hi is non-decreasing
    # for ordinary positions, so every later block visited it too. (For unordered positions the
    # extra tiles are fully masked and add exact zeros.)
    first = jnp.min(jnp.where(hi_Q > j, jnp.arange(n_q), n_q))

    def q_block(i, acc):
      dq_buf, dk_acc, dv_acc = acc
      q0 = i * bq
      q_tile, do_tile = _slice(q, q0, bq, 2), _slice(do, q0, bq, 2)
      s, dcap = _scores(plan, q_tile, k_tile, _slice(positions, q0, bq, 1),
                        _slice(q_seg, q0, bq, 1), kv_seg_tile, k0)
      p = jnp.exp(s - _slice(lse, q0, bq, 2)[..., None])  # the exact softmax, masked entries 0
      dv_acc += jnp.einsum("bkqgc,bkqgd->bkcd", p.astype(do.dtype), do_tile,
                           preferred_element_type=jnp.float32)
      dp = jnp.einsum("bkqgd,bkcd->bkqgc", do_tile, v_tile, preferred_element_type=jnp.float32)
      ds = p * (dp - _slice(delta_BxKxTxG, q0, bq, 2)[..., None])  # d loss / d capped scores
      if dcap is not None:  # through the cap to the scaled scores
        ds = ds * dcap
      ds = ds * scale
      dq_tile = _slice(dq_buf, q0, bq, 2) + jnp.einsum(
          "bkqgc,bkcd->bkqgd", ds.astype(k.dtype), k_tile, preferred_element_type=jnp.float32)
      dk_acc += jnp.einsum("bkqgc,bkqgd->bkcd", ds.astype(q.dtype), q_tile,
                           preferred_element_type=jnp.float32)
      return jax.lax.dynamic_update_slice_in_dim(dq_buf, dq_tile, q0, 2), dk_acc, dv_acc

    zeros = _varying(jnp.zeros(k_tile.shape, jnp.float32), vma)
    dq_buf, dk_tile, dv_tile = jax.lax.fori_loop(first, n_q, q_block, (dq_buf, zeros, zeros))
    dk_buf = jax.lax.dynamic_update_slice_in_dim(dk_buf, dk_tile.astype(k.dtype), k0, 2)
    dv_buf = jax.lax.dynamic_update_slice_in_dim(dv_buf, dv_tile.astype(v.dtype), k0, 2)
    return dq_buf, dk_buf, dv_buf

  vma = _vma(q, k, v, positions, q_seg, kv_seg, do)
  init = (jnp.zeros(q.shape, jnp.float32), jnp.zeros(k.shape, k.dtype), jnp.zeros(v.shape, v.dtype))
  dq, dk, dv = jax.lax.fori_loop(0, n_k, k_block, tuple(_varying(x, vma) for x in init))
  return dq.astype(q.dtype), dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(plan: _Plan, q, k, v, positions, q_seg, kv_seg):
  return _forward(plan, q, k, v, positions, q_seg, kv_seg)[0]


def _flash_fwd(plan: _Plan, q, k, v, positions, q_seg, kv_seg):
  o, lse = _forward(plan, q, k, v, positions, q_seg, kv_seg)
  return o, (q, k, v, positions, q_seg, kv_seg, o, lse)


def _flash_bwd(plan: _Plan, residuals, do):
  dq, dk, dv = _backward(plan, residuals, do)
  return dq, dk, dv, None, None, None  # positions and segment ids are integers: no cotangent


_flash.defvjp(_flash_fwd, _flash_bwd)
