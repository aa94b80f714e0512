"""Logical axis names -> mesh axes, one small table per strategy.

The model names its parameter axes (vocab, embed, heads, kv_heads, head_dim, mlp, norm, layers);
a rules table says which mesh axis, if any, each name is split over. A strategy is a table, not
model code.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sharding.mesh import BATCH_AXES

MeshAxes = Union[None, str, tuple[str, ...]]
Rules = Mapping[str, MeshAxes]

# Plain data parallelism: every parameter replicated on every device.
REPLICATED: Rules = {}


def spec_for(logical_axes: Sequence[str], shape: Sequence[int], rules: Rules, mesh: Mesh) -> PartitionSpec:
  """PartitionSpec for one array. A mesh axis is used at most once per array, and only where it
  divides the dimension (otherwise that dimension stays whole)."""
  used: set[str] = set()
  out = []
  for name, dim in zip(logical_axes, shape):
    target = rules.get(name)
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in axes if a not in used and mesh.shape.get(a, 1) > 1)
    size = 1
    for a in axes:
      size *= mesh.shape[a]
    if not axes or dim % size:
      out.append(None)
      continue
    used.update(axes)
    out.append(axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*out)


def logical_axes(variable: nnx.Variable) -> tuple[str, ...]:
  axes = variable.get_metadata().get("logical_axes")
  if axes is None:
    return (None,) * len(variable.shape)
  return tuple(axes)


def param_shardings(params: nnx.State, mesh: Mesh, rules: Rules):
  """A tree like `params` whose leaves are NamedShardings."""
  return jax.tree.map(
      lambda v: v.replace(NamedSharding(mesh, spec_for(logical_axes(v), v.shape, rules, mesh))),
      params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, extra_dims: int = 1) -> NamedSharding:
  """Batches split over every data-parallel mesh axis along their first dimension."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * extra_dims)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())
