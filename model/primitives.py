"""The two building blocks every layer module uses: a parameter carrying its logical axes, and
RMSNorm.

Every parameter is an nnx.Param carrying `logical_axes`, a tuple of names (vocab, embed, heads,
kv_heads, head_dim, latent, mlp, norm, layers) that sharding/ maps onto mesh axes; the model never
names a mesh axis.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from model.config import ModelConfig


def make_param(
    key: jax.Array,
    shape: tuple[int, ...],
    axes: tuple[str, ...],
    *,
    std: Optional[float],
    dtype,
    n_stack: Optional[int] = None,
    weight_decay: bool = True,
) -> nnx.Param:
  """A parameter drawn from N(0, std^2) (or ones when std is None).

  Its metadata carries the logical axis names and whether AdamW decays it.
  """
  if n_stack is not None:
    shape, axes = (n_stack, *shape), ("layers", *axes)
  if std is None:
    value = jnp.ones(shape, dtype)
  else:
    value = (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
  return nnx.Param(value, logical_axes=axes, weight_decay=weight_decay)


class RMSNorm(nnx.Module):
  """x / sqrt(mean(x^2) + eps) * scale over the last axis, computed in float32.

  Over d_model by default; QK-norm normalises each head over its head_dim (axis "head_dim").
  """

  def __init__(self, cfg: ModelConfig, *, n_stack: Optional[int] = None,
               width: Optional[int] = None, axis: str = "norm"):
    self.eps = cfg.norm_eps
    self.scale = make_param(
        None, (width or cfg.d_model,), (axis,), std=None, dtype=cfg.weight_dtype,
        n_stack=n_stack, weight_decay=False)

  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    x = x_BxTxD.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return (x * self.scale[...].astype(jnp.float32)).astype(x_BxTxD.dtype)
