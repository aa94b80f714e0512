"""The device mesh: named axes data, fsdp, tensor, expert, built from config.sharding.mesh."""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import jax
import jax.experimental.mesh_utils
import numpy as np
from jax.sharding import Mesh

AXES = ("data", "fsdp", "tensor", "expert")
# Axes over which the batch is split: every data-parallel replica sees its own slice of the batch.
BATCH_AXES = ("data", "fsdp", "expert")


class MeshError(ValueError):
  """A mesh that cannot be built on these devices; the message names the setting."""


def resolve_shape(spec: Mapping[str, int], n_devices: int) -> dict[str, int]:
  """Axis sizes with at most one -1 filled so that the product equals n_devices."""
  unknown = sorted(set(spec) - set(AXES))
  if unknown:
    raise MeshError(f"sharding.mesh has unknown axis {unknown}; allowed axes: {', '.join(AXES)}")
  shape = {a: int(spec.get(a, 1)) for a in AXES}
  fill = [a for a, s in shape.items() if s == -1]
  if len(fill) > 1:
    raise MeshError(f"sharding.mesh: only one axis may be -1, got {fill}")
  bad = [a for a, s in shape.items() if s == 0 or s < -1]
  if bad:
    raise MeshError(f"sharding.mesh: axis sizes must be positive or -1, got {dict(shape)}")
  known = math.prod(s for s in shape.values() if s != -1)
  if fill:
    if n_devices % known:
      raise MeshError(
          f"sharding.mesh={dict(spec)}: the fixed axes ({known}) do not divide the {n_devices} devices")
    shape[fill[0]] = n_devices // known
  if math.prod(shape.values()) != n_devices:
    raise MeshError(
        f"sharding.mesh={dict(spec)} has {math.prod(shape.values())} devices but {n_devices} are "
        "present; make the product of the axis sizes equal the device count (or use -1)")
  return shape


def make_mesh(spec: Mapping[str, int], devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_shape(spec, len(devices))
  try:
    arr = jax.experimental.mesh_utils.create_device_mesh(tuple(shape.values()), devices)
  except Exception:  # CPU or odd topologies: plain row-major order is fine
    arr = np.asarray(devices).reshape(tuple(shape.values()))
  return Mesh(arr, AXES)


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)
