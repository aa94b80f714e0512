"""Checks that a model, a batch and a ZeRO stage fit a mesh, before anything compiles.

Each check raises MeshError (a ValueError) with one line that names the setting to change. The
mesh's own shape (product equal to the device count, one -1 at most) is checked where the mesh is
built, in sharding/mesh.py.
"""

from __future__ import annotations

from typing import Mapping, Optional

from sharding import zero
from sharding.mesh import MeshError


def check_batch(batch_size: int, data_parallel: int, grad_accum: int = 1) -> None:
  """Every data-parallel device gets the same whole number of rows of every micro-batch."""
  if batch_size % (data_parallel * grad_accum):
    raise MeshError(
        f"train.batch_size={batch_size} must be divisible by the data-parallel size "
        f"({data_parallel}) times train.grad_accum ({grad_accum})")


def check_tensor(n_heads: int, n_kv_heads: int, d_ff: int, tensor: int) -> None:
  """Megatron-style tensor parallelism splits whole heads and the MLP's hidden units."""
  for name, value in (("n_heads", n_heads), ("n_kv_heads", n_kv_heads), ("d_ff", d_ff)):
    if value % tensor:
      raise MeshError(
          f"model.{name}={value} must be divisible by the tensor-parallel size "
          f"(sharding.mesh tensor={tensor})")


def check_experts(n_experts: int, expert: int) -> None:
  """Expert parallelism places whole experts on devices (for the mixture-of-experts layer)."""
  if n_experts % expert:
    raise MeshError(
        f"model.n_experts={n_experts} must be divisible by the expert-parallel size "
        f"(sharding.mesh expert={expert})")


def check_zero(stage: int, d_model: int, data_parallel: int) -> None:
  """ZeRO partitions each array along its model width over the data-parallel devices."""
  if stage not in zero.STAGES:
    raise MeshError(f"sharding.zero_stage={stage!r} is unknown; allowed: 0, 1, 2, 3")
  if stage > 0 and d_model % data_parallel:
    raise MeshError(
        f"sharding.zero_stage={stage} partitions over the {data_parallel} data-parallel devices, "
        f"which must divide model.d_model={d_model}; change the mesh or use zero_stage=0")


def check_all(
    *, mesh_shape: Mapping[str, int], batch_size: int, grad_accum: int, zero_stage: int,
    d_model: int, n_heads: int, n_kv_heads: int, d_ff: int, n_experts: Optional[int] = None,
) -> None:
  """Every check above for one run. n_experts None: a dense model, for which the expert axis is
  one more data-parallel axis."""
  dp = mesh_shape["data"] * mesh_shape["fsdp"] * mesh_shape["expert"]
  check_batch(batch_size, dp, grad_accum)
  check_tensor(n_heads, n_kv_heads, d_ff, mesh_shape["tensor"])
  if n_experts:
    check_experts(n_experts, mesh_shape["expert"])
  check_zero(zero_stage, d_model, dp)
