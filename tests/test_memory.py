"""sharding/memory.py's pre-flight search, with fake compiled-step sizes (no compile)."""

import pytest

from sharding import memory as memory_lib
from sharding.mesh import MeshError

GB = memory_lib.GB


def _asked(needs_gb):
  asked = []

  def need_at(stage):
    asked.append(stage)
    return int(needs_gb[stage] * GB)

  return need_at, asked


def test_preflight_names_the_lowest_stage_that_fits_asking_only_as_far_as_needed():
  """Catches a search that skips a stage, names a stage that does not fit, or compiles a higher
  stage when the run's own fits."""
  needs = {0: 8.0, 1: 6.0, 2: 4.5, 3: 2.0}
  need_at, asked = _asked(needs)
  with pytest.raises(MeshError, match=r"zero_stage=0, over sharding.device_memory_gb=5; "
                                      r"zero_stage=2 needs 4.5 GB$"):
    memory_lib.preflight(need_at, 0, 5.0, n_devices=8)
  assert asked == [0, 1, 2]
  need_at, asked = _asked(needs)
  assert memory_lib.preflight(need_at, 1, 7.0, n_devices=8) == int(6.0 * GB) and asked == [1]
  need_at, asked = _asked(needs)
  assert memory_lib.preflight(need_at, 0, 0.0, n_devices=8) == int(8.0 * GB)  # 0: no check


def test_preflight_when_no_stage_fits_estimates_the_devices_stage_3_needs():
  """State of 16 GB, stage 3 needing 2.5 GB on 8 devices: 0.5 GB is the rest of the step, so a
  1 GB budget holds 0.5 GB of state per device: 32 devices (an estimate, and said to be one)."""
  need_at, _ = _asked({0: 20.0, 1: 9.0, 2: 5.0, 3: 2.5})
  with pytest.raises(MeshError, match=r"no ZeRO stage fits on 8 devices.*about 32 devices would "
                                      r"fit it at zero_stage=3, estimated"):
    memory_lib.preflight(need_at, 0, 1.0, n_devices=8, state_bytes=int(16 * GB))
