"""The pieces of a decoder block: grouped-query attention (or latent attention, model/mla.py),
SwiGLU or MoE, each after an RMSNorm (model/primitives.py).

Parameters carry logical axis names (model/primitives.py make_param). A block built with n_stack = L holds each parameter with a leading `layers` axis of size
L, so the Transformer can run all its layers as one lax.scan over one compiled body.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
from flax import nnx

from model import kv_cache
from model import moe as moe_lib
from model.attention import causal_self_attention
from model.config import ModelConfig
from model.mla import LatentAttention
from model.primitives import RMSNorm, make_param, project
from model.rope import rope


class Attention(nnx.Module):
  """Causal self-attention with n_kv_heads key/value heads shared by groups of query heads."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, *, n_stack: Optional[int] = None):
    self.cfg = cfg
    d, h, k, dh = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    p = dict(dtype=cfg.weight_dtype, n_stack=n_stack, width_mult=cfg.width_mult)
    std = cfg.hidden_init_std  # init_std, over sqrt(m) under muP
    out_std = std / (2 * cfg.n_layers) ** 0.5  # residual-branch scaling (GPT-2)
    self.wq = make_param(rngs.params(), (d, h, dh), ("embed", "heads", "head_dim"), std=std, **p)
    self.wk = make_param(rngs.params(), (d, k, dh), ("embed", "kv_heads", "head_dim"), std=std, **p)
    self.wv = make_param(rngs.params(), (d, k, dh), ("embed", "kv_heads", "head_dim"), std=std, **p)
    self.wo = make_param(rngs.params(), (h, dh, d), ("heads", "head_dim", "embed"), std=out_std, **p)
    if cfg.qk_norm:  # one scale over head_dim, shared by every head (as Qwen3's q_norm, k_norm)
      self.q_norm = RMSNorm(cfg, n_stack=n_stack, width=dh, axis="head_dim")
      self.k_norm = RMSNorm(cfg, n_stack=n_stack, width=dh, axis="head_dim")

  def project_qkv(self, x_BxTxD: jax.Array, positions_BxT: jax.Array):
    """Queries, keys and values for x, with RoPE applied to q and k."""
    dt = self.cfg.compute_dtype
    x = x_BxTxD.astype(dt)
    q_BxTxHxDh = project(x, self.wq[...].astype(dt))
    k_BxTxKxDh = project(x, self.wk[...].astype(dt))
    v_BxTxKxDh = project(x, self.wv[...].astype(dt))
    if self.cfg.qk_norm:
      q_BxTxHxDh, k_BxTxKxDh = self.q_norm(q_BxTxHxDh), self.k_norm(k_BxTxKxDh)
    q_BxTxHxDh = rope(q_BxTxHxDh, positions_BxT, self.cfg.rope_theta, self.cfg.rope_scaling)
    k_BxTxKxDh = rope(k_BxTxKxDh, positions_BxT, self.cfg.rope_theta, self.cfg.rope_scaling)
    return q_BxTxHxDh, k_BxTxKxDh, v_BxTxKxDh

  def project_out(self, o_BxTxHxDh: jax.Array) -> jax.Array:
    dt = self.cfg.compute_dtype
    b, t, h, dh = o_BxTxHxDh.shape
    return project(o_BxTxHxDh.astype(dt).reshape(b, t, h * dh),
                   self.wo[...].astype(dt).reshape(h * dh, -1))

  def __call__(
      self,
      x_BxTxD: jax.Array,
      positions_BxT: jax.Array,
      segment_ids_BxT: Optional[jax.Array] = None,
  ) -> jax.Array:
    q, k, v = self.project_qkv(x_BxTxD, positions_BxT)
    o_BxTxHxDh = causal_self_attention(q, k, v, self.cfg, segment_ids_BxT)
    return self.project_out(o_BxTxHxDh)

  def decode(
      self,
      x_BxTxD: jax.Array,
      positions_BxT: jax.Array,
      k_BKxDhxS: jax.Array,
      v_BKxSxDh: jax.Array,
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Attention of T new tokens over this layer's cache: (out, k cache, v cache).

    The new keys and values go into the cache's slots at positions_BxT first, so the new tokens
    see each other causally and every earlier slot; slots past a row's position stay masked.
    Each row's T positions must be consecutive (they are in prefill, decode and verification).
    kv_cache.attend is used whatever cfg.attention_impl says: with T of 1 to a few tokens the
    (T, S) scores are small, and the step is bound by reading the cache, in its own layout.
    """
    q, k_new, v_new = self.project_qkv(x_BxTxD, positions_BxT)
    k_BKxDhxS = kv_cache.write_keys(k_BKxDhxS, k_new, positions_BxT[:, 0])
    v_BKxSxDh = kv_cache.write_values(v_BKxSxDh, v_new, positions_BxT[:, 0])
    o_BxTxHxDh = kv_cache.attend(q, k_BKxDhxS, v_BKxSxDh, positions_BxT, self.cfg.sliding_window,
                                 scale=self.cfg.attn_scale, softcap=self.cfg.attn_logit_softcap)
    return self.project_out(o_BxTxHxDh), k_BKxDhxS, v_BKxSxDh


class SwiGLU(nnx.Module):
  """down(silu(x W_gate) * (x W_up))."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, *, n_stack: Optional[int] = None):
    self.cfg = cfg
    d, f = cfg.d_model, cfg.d_ff
    p = dict(dtype=cfg.weight_dtype, n_stack=n_stack, width_mult=cfg.width_mult)
    std = cfg.hidden_init_std
    out_std = std / (2 * cfg.n_layers) ** 0.5
    self.w_gate = make_param(rngs.params(), (d, f), ("embed", "mlp"), std=std, **p)
    self.w_up = make_param(rngs.params(), (d, f), ("embed", "mlp"), std=std, **p)
    self.w_down = make_param(rngs.params(), (f, d), ("mlp", "embed"), std=out_std, **p)

  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    dt = self.cfg.compute_dtype
    x = x_BxTxD.astype(dt)
    gate_BxTxF = project(x, self.w_gate[...].astype(dt))
    up_BxTxF = project(x, self.w_up[...].astype(dt))
    return project(jax.nn.silu(gate_BxTxF) * up_BxTxF, self.w_down[...].astype(dt))


class MoEFFN(nnx.Module):
  """A Mixture-of-Experts feed-forward layer (the maths is in model/moe.py).

  Expert weights carry a leading `expert` logical axis, which sharding maps onto the `expert`
  mesh axis (expert parallelism). Returns (output, MoEStats).
  """

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, *, n_stack: Optional[int] = None):
    self.cfg = cfg
    d, f, e = cfg.d_model, cfg.d_expert, cfg.moe.n_experts
    p = dict(dtype=cfg.weight_dtype, n_stack=n_stack)
    out_std = cfg.init_std / (2 * cfg.n_layers) ** 0.5
    if cfg.moe.init_scale == "match_dense":  # output RMS at init as a dense SwiGLU of width d_ff
      out_std *= moe_lib.expert_out_gain(cfg.d_ff, f, e, cfg.moe.top_k, cfg.init_std * d ** 0.5)
    self.router = make_param(rngs.params(), (d, e), ("embed", "router"), std=cfg.init_std, **p)
    self.w_gate = make_param(rngs.params(), (e, d, f), ("expert", "embed", "mlp"), std=cfg.init_std, **p)
    self.w_up = make_param(rngs.params(), (e, d, f), ("expert", "embed", "mlp"), std=cfg.init_std, **p)
    self.w_down = make_param(rngs.params(), (e, f, d), ("expert", "mlp", "embed"), std=out_std, **p)

  def __call__(
      self, x_BxTxD: jax.Array, exchange: Optional[moe_lib.ExpertExchange] = None,
  ) -> tuple[jax.Array, moe_lib.MoEStats]:
    """exchange: when the expert weights are this device's share of the experts (see
    moe_lib.ExpertExchange); sharding supplies it through the use() hook."""
    dt = self.cfg.compute_dtype
    b, t, d = x_BxTxD.shape
    y_NxD, stats = moe_lib.moe_ffn(
        x_BxTxD.reshape(b * t, d).astype(dt), self.router[...],
        self.w_gate[...].astype(dt), self.w_up[...].astype(dt), self.w_down[...].astype(dt),
        self.cfg.moe, exchange)
    return y_NxD.reshape(b, t, d), stats


class Block(nnx.Module):
  """Pre-norm decoder block: x + attn(norm(x)), then + ffn(norm(x)), the FFN dense or MoE.

  layer: which layer this block is, when blocks are built one by one: its attention takes that
  layer's window (ModelConfig.layer_window). A stacked block (n_stack) has every layer's window.
  """

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, *, n_stack: Optional[int] = None,
               moe: bool = False, layer: Optional[int] = None):
    self.attn_norm = RMSNorm(cfg, n_stack=n_stack)
    attention_cls = LatentAttention if cfg.kv_lora_rank else Attention
    attn_cfg = cfg
    if layer is not None and cfg.global_every:
      attn_cfg = dataclasses.replace(cfg, sliding_window=cfg.layer_window(layer), global_every=0)
    self.attn = attention_cls(attn_cfg, rngs, n_stack=n_stack)
    self.mlp_norm = RMSNorm(cfg, n_stack=n_stack)
    self.mlp = MoEFFN(cfg, rngs, n_stack=n_stack) if moe else SwiGLU(cfg, rngs, n_stack=n_stack)

  def ffn(self, x_BxTxD, exchange: Optional[moe_lib.ExpertExchange] = None,
          ) -> tuple[jax.Array, Optional[moe_lib.MoEStats]]:
    """x + ffn(norm(x)), and the MoE statistics (None for a dense FFN)."""
    h_BxTxD = self.mlp_norm(x_BxTxD)
    if isinstance(self.mlp, MoEFFN):
      y, stats = self.mlp(h_BxTxD, exchange)
    else:
      y, stats = self.mlp(h_BxTxD), None
    return x_BxTxD + y, stats

  def forward(self, x_BxTxD, positions_BxT, segment_ids_BxT=None,
              exchange: Optional[moe_lib.ExpertExchange] = None):
    """(x, MoEStats or None). exchange: see MoEFFN."""
    x_BxTxD = x_BxTxD + self.attn(self.attn_norm(x_BxTxD), positions_BxT, segment_ids_BxT)
    return self.ffn(x_BxTxD, exchange)

  def __call__(self, x_BxTxD, positions_BxT, segment_ids_BxT=None):
    return self.forward(x_BxTxD, positions_BxT, segment_ids_BxT)[0]

  def decode(self, x_BxTxD, positions_BxT, k_BKxDhxS, v_BKxSxDh):
    """The block over T new tokens with this layer's cache (laid out as model/kv_cache.py
    says: keys (B*K, Dh, S), values (B*K, S, Dh)): (x, k cache, v cache)."""
    a_BxTxD, k_BKxDhxS, v_BKxSxDh = self.attn.decode(
        self.attn_norm(x_BxTxD), positions_BxT, k_BKxDhxS, v_BKxSxDh)
    x_BxTxD, _ = self.ffn(x_BxTxD + a_BxTxD)
    return x_BxTxD, k_BKxDhxS, v_BKxSxDh
