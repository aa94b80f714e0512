"""What the compiled train step needs per device, and the pre-flight check against a budget.

The number is XLA's own account of the compiled executable (`compiled.memory_analysis()`), per
device: its arguments (the train state and the batch) plus its outputs plus its temporaries,
minus what the outputs reuse of the arguments (the donated state). That is the step's peak, the
figure that decides whether a model fits, and the one ZeRO must lower; the bytes of the train
state alone (zero.formula_bytes) leave out gathered parameters, gradients and activations.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

from sharding.mesh import MeshError

GB = 1e9  # device memory is sold in decimal gigabytes (an "80 GB" H100)


def step_bytes(compiled) -> int:
  """Peak bytes per device of a compiled step: arguments + outputs + temporaries - aliased."""
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def preflight(
    need_at: Callable[[int], int], stage: int, budget_gb: float, *, n_devices: int,
    state_bytes: Optional[int] = None,
) -> int:
  """Checks the step at ZeRO `stage` against sharding.device_memory_gb; returns its bytes.

  need_at(stage) -> peak bytes per device of the compiled step at that stage (it compiles; it is
  asked about the higher stages only when `stage` does not fit). Raises MeshError, one line: the
  need, the budget, and the lowest stage that fits, or, when none does, the device count that
  stage 3 would need, estimated as below. budget_gb <= 0 checks nothing.
  """
  need = need_at(stage)
  if budget_gb <= 0 or need <= budget_gb * GB:
    return need
  head = (f"the train step needs {need / GB:.3g} GB per device at sharding.zero_stage={stage}, "
          f"over sharding.device_memory_gb={budget_gb:g}")
  needs = {stage: need}
  for higher in range(stage + 1, 4):
    needs[higher] = need_at(higher)
    if needs[higher] <= budget_gb * GB:
      raise MeshError(f"{head}; zero_stage={higher} needs {needs[higher] / GB:.3g} GB")
  hint = ""
  if state_bytes:
    # Estimate (not a measurement): at stage 3 the train state divides by the device count and
    # the rest of the step (activations, one layer's gathered parameters) does not.
    rest = needs[3] - state_bytes / n_devices
    if budget_gb * GB > rest:
      hint = (f" (about {math.ceil(state_bytes / (budget_gb * GB - rest))} devices would fit it "
              "at zero_stage=3, estimated)")
  raise MeshError(
      f"{head}; no ZeRO stage fits on {n_devices} devices: zero_stage=3 needs "
      f"{needs[3] / GB:.3g} GB{hint}. Add devices, shrink the model or the batch "
      "(train.grad_accum), or raise sharding.device_memory_gb")
