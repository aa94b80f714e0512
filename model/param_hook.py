"""ParamHook: how the model reads its stored parameters where it uses them.

The model calls hook.read(path, stored) where each group of parameters is used: ("embed",),
("final_norm",), ("lm_head",), and ("blocks",) for one layer of the scanned stack inside the scan
body (its leading layers axis already sliced off), or ("blocks", i) for layer i of an unscanned
model. `stored` is the parameters as the caller passed them in (nnx.State, or an array for embed
and lm_head); what comes back must be the same tree of arrays. The model never knows what read
does: sharding/data_parallel.py builds a hook that gathers ZeRO-3 slices one layer at a time and
taps ZeRO-2 gradients (sharding knows the mesh, the model does not).

What read returns is never saved for the backward pass: it is derived from the stored parameters
again (for ZeRO-3, re-gathered), so that the backward pass never holds every layer's whole
parameters at once. `recompute` names the primitives read's outputs come out of, for the
rematerialisation policy (model/transformer.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from model.moe import ExpertExchange


def _as_stored(path: tuple, stored: Any) -> Any:
  del path
  return stored


def _no_primitive(prim: Any, params: dict) -> bool:
  del prim, params
  return False


@dataclasses.dataclass(frozen=True)
class ParamHook:
  """read(path, stored) -> the arrays a computation reads (see the module docstring).

  recompute(primitive, params) -> bool: True for the primitives whose outputs are used
    parameters (a gather, a gradient tap's cast); the backward pass derives them again rather
    than saving every layer's.
  expert_exchange: given to every MoE layer when set; read(("blocks",), ...) then leaves the
    expert weights as this device's share of the experts, and the layer sends its tokens to them
    (expert parallelism, model/moe.py).
  """

  read: Callable[[tuple, Any], Any] = _as_stored
  recompute: Callable[[Any, dict], bool] = _no_primitive
  expert_exchange: Optional[ExpertExchange] = None

  @property
  def reads_as_stored(self) -> bool:
    """True when the model computes with the parameters as they are stored: nothing is
    delivered that the backward pass would derive again."""
    return self.read is _as_stored


AS_STORED = ParamHook()  # no sharding hook: the model reads the parameters as they are
