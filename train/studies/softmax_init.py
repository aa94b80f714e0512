"""Part (a) of the 1/sqrt(d_k) study: the softmax at initialisation, with and without the scale.

Vaswani et al. (2017, section 3.2.1): if the components of q and k are independent with mean 0
and variance 1, q.k has variance d_k, and large dot products push the softmax into regions of
tiny gradients. For each d_k: B x T queries and B x S keys, all entries N(0, 1) (as after a
normalised projection), values of a fixed width d_v, and a fixed random linear readout r of the
attention output as the loss: loss = sum_t r_t . (softmax(scores_t) V). Measured with and without
the scale: the variance of q.k, the softmax's entropy (nats, mean over queries; log S is
uniform), its largest probability, and the norm of d loss / d scores (the gradient reaching the
softmax's input, per query) and of d loss / d q. The same again with q and k from the model's own
init (model/layers.py Attention, init_std 0.02, inputs of unit RMS as after RMSNorm, RoPE).

jax is imported on first use: importing this module (and experiments/attention_scale.py, which
hands out points with --launcher=print) must not import it.
"""

from __future__ import annotations

import math

INIT_VERSION = 2  # raised when part (a) measures something new, so cached records are redone


def softmax_statistics(q_BxTxHxD, k_BxSxHxD, v_BxSxHxDv, r_BxTxHxDv, scale: float) -> dict:
  """Statistics of softmax(scale * q.k) over the S keys (no mask), with the loss
  sum(r * attention output). Returns floats: var of q.k (unscaled), var of the scores, mean
  entropy (nats), mean largest probability, mean per-query norms of d loss / d scores and of
  d loss / d q."""
  return {k: float(v) for k, v in _softmax_statistics(
      q_BxTxHxD, k_BxSxHxD, v_BxSxHxDv, r_BxTxHxDv, scale).items()}


def _softmax_statistics_impl(q_BxTxHxD, k_BxSxHxD, v_BxSxHxDv, r_BxTxHxDv, scale):
  import jax
  import jax.numpy as jnp

  def scores_of(q):
    return jnp.einsum("bthd,bshd->bhts", q, k_BxSxHxD) * scale

  def loss_of_scores(scores_BxHxTxS):
    probs = jax.nn.softmax(scores_BxHxTxS, axis=-1)
    return jnp.sum(jnp.einsum("bhts,bshd->bthd", probs, v_BxSxHxDv) * r_BxTxHxDv)

  qk_BxHxTxS = jnp.einsum("bthd,bshd->bhts", q_BxTxHxD, k_BxSxHxD)
  scores = qk_BxHxTxS * scale
  logp = jax.nn.log_softmax(scores, axis=-1)
  p = jnp.exp(logp)
  g_scores = jax.grad(loss_of_scores)(scores)
  g_q = jax.grad(lambda q: loss_of_scores(scores_of(q)))(q_BxTxHxD)
  return {
      "var_qk": jnp.var(qk_BxHxTxS),
      "var_scores": jnp.var(scores),
      "entropy": jnp.mean(-jnp.sum(p * logp, axis=-1)),
      "max_prob": jnp.mean(jnp.max(p, axis=-1)),
      "saturated_share": jnp.mean(jnp.max(p, axis=-1) > 0.99),  # queries on one key, nearly
      "grad_scores_norm": jnp.mean(jnp.linalg.norm(g_scores, axis=-1)),
      "grad_scores_norm_median": jnp.median(jnp.linalg.norm(g_scores, axis=-1)),
      "grad_q_norm": jnp.mean(jnp.linalg.norm(g_q, axis=-1)),
  }


def _softmax_statistics(*args):
  """_softmax_statistics_impl compiled once per shape (jitted on first use: importing this
  module must not import jax)."""
  global _JITTED
  if _JITTED is None:
    import jax
    _JITTED = jax.jit(_softmax_statistics_impl)
  return _JITTED(*args)


_JITTED = None


def init_point(icfg, d_k: int) -> dict:
  """Part (a) for one d_k: unit-variance q, k, and q, k from the model's own init."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from model import layers
  from model.config import ModelConfig

  b, t, s, dv = icfg.batch, icfg.n_queries, icfg.n_keys, icfg.d_v
  kq, kk, kv, kr, kx, kp, km = jax.random.split(jax.random.key(icfg.seed), 7)
  v = jax.random.normal(kv, (b, s, 1, dv))
  r = jax.random.normal(kr, (b, t, 1, dv)) / math.sqrt(dv)  # each u_s = v_s . r_t has variance 1
  q = jax.random.normal(kq, (b, t, 1, d_k))
  k = jax.random.normal(kk, (b, s, 1, d_k))
  out = {"d_k": d_k, "log_n_keys": math.log(s)}
  for name, scale in (("scaled", d_k ** -0.5), ("unscaled", 1.0)):
    out[name] = softmax_statistics(q, k, v, r, scale)

  # The model's own init: one Attention layer, queries and keys of the same S inputs.
  d = icfg.model_d_model
  if not d:  # 0: unit-variance q and k only
    return out
  heads = d // d_k
  cfg = ModelConfig(vocab_size=256, d_model=d, n_layers=1, n_heads=heads, n_kv_heads=heads,
                    d_ff=d, max_seq_len=s, scan_layers=False, dtype="float32")
  attn = layers.Attention(cfg, nnx.Rngs(params=km))
  x = jax.random.normal(kx, (b, s, d))
  x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True))  # unit RMS, as after RMSNorm
  positions = jnp.broadcast_to(jnp.arange(s)[None], (b, s))
  qm, km_, _ = attn.project_qkv(x, positions)
  vm = jax.random.normal(kp, (b, s, heads, dv))
  rm = jax.random.normal(kr, (b, s, heads, dv)) / math.sqrt(dv)
  out["model_init"] = {"d_model": d, "n_heads": heads, "init_std": cfg.init_std,
                       "var_q_entry": float(jnp.var(qm))}
  for name, scale in (("scaled", d_k ** -0.5), ("unscaled", 1.0)):
    out["model_init"][name] = softmax_statistics(qm, km_, vm, rm, scale)
  return out
