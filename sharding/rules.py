"""Logical axis names -> mesh axes, one small table per strategy.

The model names its parameter axes (vocab, embed, heads, kv_heads, head_dim, mlp, norm, layers);
a rules table says which mesh axes, if any, each name is split over. A strategy is a table, not
model code: sharding/zero.py builds the ZeRO stages from the tables here.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence, Union

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sharding.mesh import BATCH_AXES

MeshAxes = Union[None, str, tuple[str, ...]]
Rules = Mapping[str, MeshAxes]

# Plain data parallelism: every parameter replicated on every device.
REPLICATED: Rules = {}

# Megatron-style tensor parallelism: attention split by heads, the MLP by its hidden dimension,
# the embedding table by vocabulary rows. A mesh with tensor=1 makes this table a no-op, so every
# strategy starts from it.
TENSOR_PARALLEL: Rules = {
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "vocab": "tensor",
    "expert": "expert",  # expert parallelism: whole experts live on their expert-axis devices
}


def _axes(target: MeshAxes) -> tuple[str, ...]:
  return (target,) if isinstance(target, str) else tuple(target or ())


def spec_for(logical_axes: Sequence[str], shape: Sequence[int], rules: Rules, mesh: Mesh) -> PartitionSpec:
  """PartitionSpec for one array.

  Entries are applied in table order, and a mesh axis is used at most once per array, so an earlier
  entry claims its axes first (tensor and expert before the ZeRO split). A dimension is split only
  where the mesh axes divide it; otherwise it stays whole (sharding/validate.py rejects the cases
  that matter before anything compiles).
  """
  out: list[MeshAxes] = [None] * len(shape)
  used: set[str] = set()
  for name, target in rules.items():
    for i, (axis_name, dim) in enumerate(zip(logical_axes, shape)):
      if axis_name != name or out[i] is not None:
        continue
      axes = tuple(a for a in _axes(target) if a not in used and mesh.shape.get(a, 1) > 1)
      if not axes or dim % math.prod(mesh.shape[a] for a in axes):
        continue
      used.update(axes)
      out[i] = axes[0] if len(axes) == 1 else axes
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


def batch_shardings(mesh: Mesh, abstract_batch: Any) -> Any:
  """A tree like `abstract_batch` (any arrays whose leading dimension is the rows) whose leaves
  split those rows over every data-parallel mesh axis; None (no structure given): one sharding,
  a prefix of every such tree."""
  rows_sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXES))
  if abstract_batch is None:
    return rows_sharding
  return jax.tree.map(lambda _: rows_sharding, abstract_batch)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())
