"""Multi-host start-up on JAX's own distributed runtime.

Every process runs the same program on its own devices. jax.distributed.initialize connects them
(through a coordinator at process 0's address) before any of them touches a device; afterwards
jax.devices() lists the devices of all processes, and one jitted step spans them all.

Where the settings come from:
  flags        --coordinator_address=HOST:PORT --num_processes=N --process_id=I: any cluster, or
               several processes on one machine (the test starts two on localhost)
  environment  SLURM (srun), Open MPI (mpirun) and Cloud TPU VMs: JAX reads its settings itself
  neither      one process on its local devices (a laptop, one GPU box): nothing to initialise
"""

from __future__ import annotations

import glob
import importlib.util
import os
from typing import Mapping, Optional

import jax


class DistributedError(ValueError):
  """Multi-host flags that cannot work; the message names them."""


def detected_cluster(environ: Mapping[str, str] = os.environ) -> Optional[str]:
  """The launcher of a multi-process job that JAX reads its settings from, or None.

  Mirrors what jax.distributed.initialize() detects, but only says yes where there is more than
  one process to connect, so that a laptop (or a one-task SLURM job) never waits for peers.
  """
  def count(name: str) -> int:
    try:
      return int(environ.get(name, "1"))
    except ValueError:
      return 1

  if "SLURM_JOB_ID" in environ and max(count("SLURM_NTASKS"), count("SLURM_NPROCS")) > 1:
    return "slurm"
  if count("OMPI_COMM_WORLD_SIZE") > 1:
    return "openmpi"
  hosts = environ.get("TPU_WORKER_HOSTNAMES", "")
  if "," in hosts or environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "tpu"
  on_tpu_vm = glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")
  if on_tpu_vm and importlib.util.find_spec("libtpu") is not None:
    return "tpu"  # a Cloud TPU VM; JAX asks its metadata server how many hosts the slice has
  return None


def initialize(
    coordinator_address: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
    *,
    environ: Mapping[str, str] = os.environ,
) -> bool:
  """Starts the multi-process runtime if the flags or the environment ask for one.

  Must run before anything touches a device. Returns True when a runtime was started. Flags given
  together win; on a detected cluster any flag left out is read from the environment by JAX.
  """
  flags = {"coordinator_address": coordinator_address, "num_processes": num_processes,
           "process_id": process_id}
  given = {k: v for k, v in flags.items() if v is not None}
  cluster = detected_cluster(environ)
  if not given and cluster is None:
    return False
  if given == {"num_processes": 1}:
    return False  # an explicit single process: nothing to connect
  missing = [f"--{k}" for k, v in flags.items() if v is None]
  if missing and cluster is None:
    raise DistributedError(
        f"multi-host flags need each other: {', '.join(missing)} missing (or launch under SLURM, "
        "Open MPI or on a TPU pod slice, where JAX finds them itself)")
  if num_processes is not None and num_processes < 1:
    raise DistributedError(f"--num_processes={num_processes} must be at least 1")
  if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
    raise DistributedError(
        f"--process_id={process_id} must be in [0, --num_processes={num_processes})")
  # Collectives between CPU processes (the default in recent JAX, explicit for older ones); GPUs
  # and TPUs use NCCL and ICI/DCN whatever this says.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
  return True
