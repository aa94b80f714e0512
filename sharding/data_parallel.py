"""Data parallelism with explicit collectives: each device differentiates its share of the batch,
and the per-device gradients are summed by the collective the ZeRO stage calls for.

Under plain jit XLA derives these collectives itself, but whether a sum of which each device needs
only a slice becomes a reduce-scatter depends on the backend: the CPU compiler all-reduces the whole
gradient and then slices it, materialising it whole on every device. Written by hand in a
shard_map, the reduction is the same on every backend:

  gradients whole (stage 0, 1)        psum          -> all-reduce
  gradients partitioned (stage 2, 3)  psum_scatter  -> reduce-scatter into each device's slice
  parameters partitioned (stage 3)    all_gather    -> whole parameters inside the step only

Only the data-parallel mesh axes are manual; tensor parallelism inside stays XLA's to partition.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
from jax.sharding import Mesh, PartitionSpec

from sharding.mesh import BATCH_AXES

# (params, batch (B, L+1)) -> (objective sum, token count, gradients like params, metric sums)
GradFn = Callable[[Any, jax.Array], tuple[jax.Array, jax.Array, Any, dict]]

_is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731


def _entry_axes(entry) -> tuple[str, ...]:
  return (entry,) if isinstance(entry, str) else tuple(entry or ())


def manual_spec(spec: PartitionSpec, manual_axes: tuple[str, ...]) -> PartitionSpec:
  """`spec` with every mesh axis that is not manual dropped: what shard_map sees of the array."""
  out = []
  for entry in spec:
    axes = tuple(a for a in _entry_axes(entry) if a in manual_axes)
    out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*out)


def split_of(spec: PartitionSpec) -> Optional[tuple[int, tuple[str, ...]]]:
  """(dimension, mesh axes) along which a manual spec is split, or None for a whole array."""
  for dim, entry in enumerate(spec):
    if entry is not None:
      return dim, _entry_axes(entry)
  return None


def data_parallel_axes(mesh: Mesh) -> tuple[str, ...]:
  return tuple(a for a in BATCH_AXES if mesh.shape[a] > 1)


def data_parallel(grad_fn: GradFn, mesh: Mesh, param_sharding: Any, grad_sharding: Any) -> GradFn:
  """grad_fn run on each data-parallel device's share of the batch, its results summed.

  param_sharding: where the parameters are stored (a tree of NamedShardings like the params); those
  split over data-parallel axes (stage 3) are all-gathered before use. grad_sharding: where the
  gradient sum must land; split ones are reduce-scattered, whole ones all-reduced.
  """
  dp = data_parallel_axes(mesh)
  if not dp:
    return grad_fn  # one data-parallel device: nothing to sum
  specs = lambda tree: jax.tree.map(lambda s: manual_spec(s.spec, dp), tree)  # noqa: E731
  param_specs, grad_specs = specs(param_sharding), specs(grad_sharding)

  def gather(x, spec):
    """The whole parameter, typed as varying over the data-parallel axes: its gradient is then
    this device's own, which `reduce` sums. (A parameter typed invariant would get a gradient
    that shard_map had already summed, and summing it again would scale it by N.)"""
    split = split_of(spec)
    if split is None:
      return jax.lax.pcast(x, dp, to="varying")
    return jax.lax.all_gather(x, split[1], axis=split[0], tiled=True)

  def reduce(g, spec):
    split = split_of(spec)
    if split is None:
      return jax.lax.psum(g, dp)
    if split[1] != dp:  # the sum runs over every data-parallel axis, the scatter over a subset
      g = jax.lax.psum(g, tuple(a for a in dp if a not in split[1]))
    return jax.lax.psum_scatter(g, split[1], scatter_dimension=split[0], tiled=True)

  def local(params, batch_BxL1):
    params = jax.tree.map(gather, params, param_specs, is_leaf=_is_spec)
    objective, n, grads, sums = grad_fn(params, batch_BxL1)
    grads = jax.tree.map(reduce, grads, grad_specs, is_leaf=_is_spec)
    return (jax.lax.psum(objective, dp), jax.lax.psum(n, dp), grads,
            jax.tree.map(lambda x: jax.lax.psum(x, dp), sums))

  return jax.shard_map(
      local, mesh=mesh, axis_names=set(dp),
      in_specs=(param_specs, PartitionSpec(dp)),
      out_specs=(PartitionSpec(), PartitionSpec(), grad_specs, PartitionSpec()))
