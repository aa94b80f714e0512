"""Multi-head latent attention (MLA, DeepSeek-V2): keys and values from one low-rank latent.

Every token is compressed to a latent c = RMSNorm(x W_dkv) of width Dc (model.kv_lora_rank),
much smaller than the 2 * H * Dh of MHA's keys and values. Each head's key is
[c W_uk | k_rope] and its value c W_uv, where W_uk and W_uv up-project the latent per head. RoPE
cannot act on c W_uk (a rotation between W_uk and the query would stop the two matrices from
merging, below), so position enters through a separate, decoupled key k_rope = RoPE(x W_kr) of
width Dr (model.qk_rope_head_dim), shared by all heads, and the last Dr dims of each query head.
Head width Dh = Dn + Dr (no-RoPE and RoPE parts); the value head is Dh wide.

Training computes keys and values explicitly and runs any attention implementation (MHA).
Decoding caches only [c | k_rope] per token, (Dc + Dr) numbers per layer against MHA's 2 H Dh,
and never up-projects the cache ("absorbed" matrices):
  score  = q_nope . (c W_uk) + q_rope . k_rope = (q_nope W_uk^T) . c + q_rope . k_rope
  output = sum_s p_s c_s W_uv = (sum_s p_s c_s) W_uv
so each query head is mapped into latent space once, and attention runs over the latents.
Shapes: B batch, T new tokens, S cache slots, H heads, Dc latent, Dr RoPE dims, Dn = Dh - Dr.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from model import kv_cache
from model.attention import causal_self_attention
from model.config import ModelConfig
from model.primitives import RMSNorm, make_param, project
from model.rope import rope


class LatentAttention(nnx.Module):
  """Causal multi-head latent attention; the same interface as layers.Attention."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, *, n_stack: Optional[int] = None):
    self.cfg = cfg
    d, h, dh = cfg.d_model, cfg.n_heads, cfg.head_dim
    dc, dr = cfg.kv_lora_rank, cfg.qk_rope_head_dim
    p = dict(dtype=cfg.weight_dtype, n_stack=n_stack)
    std, out_std = cfg.init_std, cfg.init_std / (2 * cfg.n_layers) ** 0.5
    self.wq = make_param(rngs.params(), (d, h, dh), ("embed", "heads", "head_dim"), std=std, **p)
    self.w_dkv = make_param(rngs.params(), (d, dc), ("embed", "latent"), std=std, **p)
    self.kv_norm = RMSNorm(cfg, n_stack=n_stack, width=dc, axis="latent")
    self.w_uk = make_param(rngs.params(), (dc, h, dh - dr), ("latent", "heads", "head_dim"),
                           std=std, **p)
    self.w_uv = make_param(rngs.params(), (dc, h, dh), ("latent", "heads", "head_dim"), std=std, **p)
    self.w_kr = make_param(rngs.params(), (d, dr), ("embed", "head_dim"), std=std, **p)
    self.wo = make_param(rngs.params(), (h, dh, d), ("heads", "head_dim", "embed"), std=out_std, **p)

  def _project(self, x_BxTxD: jax.Array, positions_BxT: jax.Array):
    """(queries (B, T, H, Dh) with RoPE on their last Dr dims, latents (B, T, Dc), RoPE keys
    (B, T, Dr))."""
    cfg, dt = self.cfg, self.cfg.compute_dtype
    dn = cfg.head_dim - cfg.qk_rope_head_dim
    x = x_BxTxD.astype(dt)
    q_BxTxHxDh = project(x, self.wq[...].astype(dt))
    q_rope = rope(q_BxTxHxDh[..., dn:], positions_BxT, cfg.rope_theta, cfg.rope_scaling)
    q_BxTxHxDh = jnp.concatenate([q_BxTxHxDh[..., :dn], q_rope], axis=-1)
    c_BxTxDc = self.kv_norm(project(x, self.w_dkv[...].astype(dt)))
    kr_BxTx1xDr = rope(project(x, self.w_kr[...].astype(dt))[:, :, None],
                       positions_BxT, cfg.rope_theta, cfg.rope_scaling)
    return q_BxTxHxDh, c_BxTxDc, kr_BxTx1xDr[:, :, 0]

  def _out(self, o_BxTxHxDh: jax.Array) -> jax.Array:
    dt = self.cfg.compute_dtype
    b, t, h, dh = o_BxTxHxDh.shape
    return project(o_BxTxHxDh.astype(dt).reshape(b, t, h * dh), self.wo[...].astype(dt).reshape(h * dh, -1))

  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array,
               segment_ids_BxT: Optional[jax.Array] = None) -> jax.Array:
    dt, h = self.cfg.compute_dtype, self.cfg.n_heads
    q, c_BxTxDc, kr_BxTxDr = self._project(x_BxTxD, positions_BxT)
    k_nope_BxTxHxDn = jnp.einsum("btc,chn->bthn", c_BxTxDc, self.w_uk[...].astype(dt))
    kr_BxTxHxDr = jnp.broadcast_to(kr_BxTxDr[:, :, None], (*kr_BxTxDr.shape[:2], h, kr_BxTxDr.shape[-1]))
    k_BxTxHxDh = jnp.concatenate([k_nope_BxTxHxDn, kr_BxTxHxDr.astype(dt)], axis=-1)
    v_BxTxHxDh = jnp.einsum("btc,chd->bthd", c_BxTxDc, self.w_uv[...].astype(dt))
    o_BxTxHxDh = causal_self_attention(q, k_BxTxHxDh, v_BxTxHxDh, self.cfg, segment_ids_BxT)
    return self._out(o_BxTxHxDh)

  def decode(self, x_BxTxD: jax.Array, positions_BxT: jax.Array, latents_BxCxS: jax.Array,
             unused_BxSx0: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """T new tokens against this layer's latent cache (B, Dc + Dr, S): (out, cache, unused).

    The cache's second buffer is empty (kv_cache.init): MLA caches latents only.
    """
    cfg, dt = self.cfg, self.cfg.compute_dtype
    dn, dc = cfg.head_dim - cfg.qk_rope_head_dim, cfg.kv_lora_rank
    q, c_BxTxDc, kr_BxTxDr = self._project(x_BxTxD, positions_BxT)
    new_BxTx1xC = jnp.concatenate([c_BxTxDc, kr_BxTxDr.astype(dt)], axis=-1)[:, :, None]
    latents_BxCxS = kv_cache.write_keys(latents_BxCxS, new_BxTx1xC, positions_BxT[:, 0])
    # The query's no-RoPE part in latent space: q_nope W_uk^T, one (Dc,) vector per head.
    q_lat_BxTxHxDc = jnp.einsum("bthn,chn->bthc", q[..., :dn], self.w_uk[...].astype(dt))
    q_BxTxHxC = jnp.concatenate([q_lat_BxTxHxDc, q[..., dn:]], axis=-1)
    o_lat_BxTxHxDc = kv_cache.attend_latent(
        q_BxTxHxC, latents_BxCxS, positions_BxT, dc, scale=cfg.attn_scale,
        window=cfg.sliding_window, softcap=cfg.attn_logit_softcap)
    o_BxTxHxDh = jnp.einsum("bthc,chd->bthd", o_lat_BxTxHxDc.astype(dt), self.w_uv[...].astype(dt))
    return self._out(o_BxTxHxDh), latents_BxCxS, unused_BxSx0
