"""A plain decoder to measure llmlab's train step against: Flax linen, the shape of nanodo's.

Pre-norm blocks (LayerNorm, multi-head causal attention, LayerNorm, GELU MLP), learned positions,
embeddings tied to the output head, optax AdamW, no scan, no remat, no sharding hooks. It is
deliberately the simplest fast step one would write by hand; experiments.bench_train times it
beside llmlab's, alternating, so the ratio of the two does not depend on how busy the machine is.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class PeerConfig:
  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  d_ff: int
  seq_len: int
  dtype: str = "float32"  # compute dtype; parameters stay float32


def flops_per_token(cfg: PeerConfig) -> float:
  """6 N over the matmul weights a token touches (4 D^2 + 2 D F per layer, plus the tied head)
  and the causal attention term, counted as model/config.flops_per_token counts llmlab's."""
  per_layer = 4 * cfg.d_model**2 + 2 * cfg.d_model * cfg.d_ff
  n = cfg.n_layers * per_layer + cfg.vocab_size * cfg.d_model
  attn = 12 * cfg.n_layers * cfg.d_model * cfg.seq_len / 2
  return 6.0 * n + attn


class _Block(nn.Module):
  cfg: PeerConfig

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    c = self.cfg
    dt = jnp.dtype(c.dtype)
    dh = c.d_model // c.n_heads
    h_BxLxD = nn.LayerNorm(dtype=dt)(x_BxLxD)
    qkv_BxLx3xHxDh = nn.DenseGeneral((3, c.n_heads, dh), use_bias=False, dtype=dt)(h_BxLxD)
    q, k, v = (qkv_BxLx3xHxDh[:, :, i] for i in range(3))
    scores_BxHxLxL = jnp.einsum("bqhd,bkhd->bhqk", q, k) * dh**-0.5
    length = x_BxLxD.shape[1]
    causal_LxL = jnp.tril(jnp.ones((length, length), bool))
    scores_BxHxLxL = jnp.where(causal_LxL, scores_BxHxLxL, jnp.finfo(scores_BxHxLxL.dtype).min)
    probs = jax.nn.softmax(scores_BxHxLxL.astype(jnp.float32), axis=-1).astype(dt)
    o_BxLxHxDh = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    out = nn.DenseGeneral(c.d_model, axis=(-2, -1), use_bias=False, dtype=dt)
    x_BxLxD = x_BxLxD + out(o_BxLxHxDh)
    h_BxLxD = nn.LayerNorm(dtype=dt)(x_BxLxD)
    h_BxLxF = nn.gelu(nn.Dense(c.d_ff, use_bias=False, dtype=dt)(h_BxLxD))
    return x_BxLxD + nn.Dense(c.d_model, use_bias=False, dtype=dt)(h_BxLxF)


class PeerDecoder(nn.Module):
  """Token ids (B, L) -> logits (B, L, V) in float32."""

  cfg: PeerConfig

  @nn.compact
  def __call__(self, tokens_BxL: jax.Array) -> jax.Array:
    c = self.cfg
    embed = nn.Embed(c.vocab_size, c.d_model, embedding_init=nn.initializers.normal(0.02),
                     dtype=jnp.dtype(c.dtype))
    pos_LxD = self.param("positions", nn.initializers.normal(0.02), (c.seq_len, c.d_model))
    x_BxLxD = embed(tokens_BxL) + pos_LxD[: tokens_BxL.shape[1]].astype(c.dtype)
    for _ in range(c.n_layers):
      x_BxLxD = _Block(c)(x_BxLxD)
    x_BxLxD = nn.LayerNorm(dtype=jnp.dtype(c.dtype))(x_BxLxD)
    return embed.attend(x_BxLxD).astype(jnp.float32)


def make_train_step(cfg: PeerConfig, key: jax.Array) -> tuple[Callable, dict]:
  """(step(state, batch_BxL1) -> (state, loss), jitted and donating the state; initial state)."""
  decoder = PeerDecoder(cfg)
  params = decoder.init(key, jnp.zeros((1, cfg.seq_len), jnp.int32))
  tx = optax.adamw(1e-3, weight_decay=0.1)
  state = {"params": params, "opt_state": tx.init(params)}

  def loss_fn(params, batch_BxL1):
    logits_BxLxV = decoder.apply(params, batch_BxL1[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, batch_BxL1[:, 1:]).mean()

  def step(state, batch_BxL1):
    loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch_BxL1)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}, loss

  return jax.jit(step, donate_argnums=0), state
