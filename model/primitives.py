"""The building blocks every layer module uses: a parameter carrying its logical axes, RMSNorm,
and the projection x @ w with a weight gradient laid out for speed (dense, project).

Every parameter is an nnx.Param carrying `logical_axes`, a tuple of names (vocab, embed, heads,
kv_heads, head_dim, latent, mlp, norm, layers) that sharding/ maps onto mesh axes; the model never
names a mesh axis. It also carries what the optimizer reads: `weight_decay` (whether AdamW decays
it), `mup_kind` (embedding | hidden | readout | vector: its muP rule) and `width_mult` (muP's m,
1.0 under the standard parametrization); train/optimizer.py builds the per-parameter learning rate
multipliers from these two.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from model.config import ModelConfig

MUP_KINDS = ("embedding", "hidden", "readout", "vector")


def make_param(
    key: jax.Array,
    shape: tuple[int, ...],
    axes: tuple[str, ...],
    *,
    std: Optional[float],
    dtype,
    n_stack: Optional[int] = None,
    weight_decay: bool = True,
    mup_kind: Optional[str] = None,
    width_mult: float = 1.0,
) -> nnx.Param:
  """A parameter drawn from N(0, std^2) (or ones when std is None).

  Its metadata carries the logical axis names, whether AdamW decays it, and its muP kind
  (default: "vector" for a ones-initialised scale, "hidden" for a matrix) and width multiplier.
  """
  if mup_kind is None:
    mup_kind = "vector" if std is None else "hidden"
  assert mup_kind in MUP_KINDS, mup_kind
  if n_stack is not None:
    shape, axes = (n_stack, *shape), ("layers", *axes)
  if std is None:
    value = jnp.ones(shape, dtype)
  else:
    value = (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
  return nnx.Param(value, logical_axes=axes, weight_decay=weight_decay, mup_kind=mup_kind,
                   width_mult=float(width_mult))


def softcap(x: jax.Array, cap: float) -> jax.Array:
  """cap * tanh(x / cap): x where |x| << cap, bounded by +-cap (Gemma 2); cap = 0: x unchanged."""
  if not cap:
    return x
  return cap * jnp.tanh(x / cap)


class RMSNorm(nnx.Module):
  """x / sqrt(mean(x^2) + eps) * scale over the last axis, computed in float32.

  Over d_model by default; QK-norm normalises each head over its head_dim (axis "head_dim").
  """

  def __init__(self, cfg: ModelConfig, *, n_stack: Optional[int] = None,
               width: Optional[int] = None, axis: str = "norm"):
    self.eps = cfg.norm_eps
    self.scale = make_param(
        None, (width or cfg.d_model,), (axis,), std=None, dtype=cfg.weight_dtype,
        n_stack=n_stack, weight_decay=False, width_mult=cfg.width_mult)

  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    x = x_BxTxD.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return (x * self.scale[...].astype(jnp.float32)).astype(x_BxTxD.dtype)


@jax.custom_vjp
def dense(x_NxD: jax.Array, w_DxF: jax.Array) -> jax.Array:
  """x @ w, differentiated so that the weight gradient relays out the smaller operand.

  The weight gradient sum_n x[n, d] g[n, f] contracts the rows, the major axis of both operands;
  the matmul needs one of them transposed. Autodiff's rule makes the cotangent g the left
  operand and transposes it; with F = 4 D (the FFN's up and gate projections) that copies four
  times the bytes of transposing x, and XLA on CPU fuses the elementwise backward (silu's
  derivative) into that transposed copy, reading in a cache-hostile order. Here the smaller of
  x and g is the one transposed. Same products and sums: bit-identical results on CPU
  (tests/test_layers.py), the SwiGLU forward+backward 1.8x faster at the benchmark's shape.
  """
  return x_NxD @ w_DxF


def _dense_fwd(x_NxD, w_DxF):
  return x_NxD @ w_DxF, (x_NxD, w_DxF)


def _dense_bwd(res, g_NxF):
  x_NxD, w_DxF = res
  rows = (((0,), (0,)), ((), ()))
  dx_NxD = jax.lax.dot_general(g_NxF, w_DxF, (((1,), (1,)), ((), ())))
  if x_NxD.shape[1] <= g_NxF.shape[1]:
    dw_DxF = jax.lax.dot_general(x_NxD, g_NxF, rows)
  else:
    dw_DxF = jax.lax.dot_general(g_NxF, x_NxD, rows).T
  return dx_NxD, dw_DxF.astype(w_DxF.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)


def project(x_BxTxD: jax.Array, w_DxO: jax.Array) -> jax.Array:
  """x (B, T, D) times w (D, *out): (B, T, *out), through dense()."""
  b, t, d = x_BxTxD.shape
  out = w_DxO.shape[1:]
  y = dense(x_BxTxD.reshape(b * t, d), w_DxO.reshape(d, -1))
  return y.reshape(b, t, *out)
