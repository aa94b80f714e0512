"""ZeRO stages 0-3 (Rajbhandari et al. 2020) as layouts of the train state, not as model code.

ZeRO removes the redundancy of data parallelism by partitioning parts of the train state over the
N data-parallel devices (every mesh axis the batch is split over):

  stage  parameters   gradients                     optimizer state  bytes per device
  0      replicated   replicated (all-reduced)      replicated       P + G + O
  1      replicated   replicated (all-reduced)      partitioned      P + G + O / N
  2      replicated   partitioned (reduce-scattered) partitioned     P + (G + O) / N
  3      partitioned  partitioned (reduce-scattered) partitioned     (P + G + O) / N

A stage is a Layout: one rules table (sharding/rules.py) for each part of the state. The train step
pins each part to its layout and XLA derives the collectives: an all-reduce where gradients must be
whole, a reduce-scatter where each device needs only its own slice of the sum, an all-gather where
partitioned parameters are used (stage 3) or updated slices become whole parameters again (1, 2).
Partitioned arrays are split along their model width (`embed`, `norm`), the one axis every
parameter has; tensor parallelism claims its axes first, so it composes with every stage.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from sharding import rules as rules_lib
from sharding.mesh import BATCH_AXES

STAGES = (0, 1, 2, 3)

# The ZeRO split: on top of tensor parallelism, every array's model width over the data-parallel
# devices. Table order matters: tensor entries come first and claim their mesh axes first.
PARTITIONED: rules_lib.Rules = {
    **rules_lib.TENSOR_PARALLEL,
    "embed": BATCH_AXES,
    "norm": BATCH_AXES,
    "latent": BATCH_AXES,  # latent attention's up-projections have no embed axis
}
WHOLE: rules_lib.Rules = rules_lib.TENSOR_PARALLEL  # whole on every data-parallel device


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where each part of the train state lives, as rules tables."""

  params: rules_lib.Rules  # between steps; stage 3 gathers them inside the step for use
  grads: rules_lib.Rules  # where the backward pass's sum over the batch is reduced to
  opt_state: rules_lib.Rules  # optimizer moments, and the update computed from them


LAYOUTS: dict[int, Layout] = {
    0: Layout(params=WHOLE, grads=WHOLE, opt_state=WHOLE),
    1: Layout(params=WHOLE, grads=WHOLE, opt_state=PARTITIONED),
    2: Layout(params=WHOLE, grads=PARTITIONED, opt_state=PARTITIONED),
    3: Layout(params=PARTITIONED, grads=PARTITIONED, opt_state=PARTITIONED),
}


def layout(stage: int) -> Layout:
  if stage not in LAYOUTS:
    raise ValueError(f"sharding.zero_stage={stage!r} is unknown; allowed: 0, 1, 2, 3")
  return LAYOUTS[stage]


@dataclasses.dataclass(frozen=True)
class StateShardings:
  """NamedShardings of the train state, and of the gradients and updates inside the step."""

  state: dict  # like TrainState: {step, params, opt_state, rng}
  params: Any  # nnx.State of NamedShardings (where parameters live between steps)
  grads: Any  # nnx.State of NamedShardings, like params
  updates: Any  # nnx.State of NamedShardings: the optimizer's output, laid out like its moments


def state_shardings(abstract_state: dict, stage: int, mesh: Mesh) -> StateShardings:
  """Shardings for a TrainState (train/step.py) under ZeRO `stage` on `mesh`.

  Optimizer entries that mirror the parameters (Adam's moments) take the opt_state layout;
  everything else (step, counts, PRNG key) is replicated.
  """
  lay = layout(stage)
  abstract_params = abstract_state["params"]
  of = lambda rules: rules_lib.param_shardings(abstract_params, mesh, rules)  # noqa: E731
  params, grads, moments = of(lay.params), of(lay.grads), of(lay.opt_state)
  repl = rules_lib.replicated(mesh)
  params_def = jax.tree.structure(abstract_params)

  def for_node(node):
    if isinstance(node, nnx.State) and jax.tree.structure(node) == params_def:
      return moments
    return jax.tree.map(lambda _: repl, node)

  opt = jax.tree.map(for_node, abstract_state["opt_state"], is_leaf=lambda n: isinstance(n, nnx.State))
  state = {"step": repl, "params": params, "opt_state": opt, "rng": repl}
  return StateShardings(state=state, params=params, grads=grads, updates=moments)


# --- Memory: the formula, and the measurement it is checked against ------------------------------

def formula_bytes(stage: int, p: float, g: float, o: float, n: int) -> dict[str, float]:
  """Bytes per device of parameters, gradients and optimizer state under ZeRO `stage` with N
  data-parallel devices, given their unpartitioned sizes P, G, O in bytes.

  Mixed-precision Adam (the paper's case): P = 2 Psi, G = 2 Psi, O = 12 Psi. Float32 parameters
  and gradients with Adam's m and v: P = 4 Psi, G = 4 Psi, O = 8 Psi.
  """
  split_p, split_g, split_o = {0: (1, 1, 1), 1: (1, 1, n), 2: (1, n, n), 3: (n, n, n)}[stage]
  out = {"params": p / split_p, "grads": g / split_g, "opt_state": o / split_o}
  out["total"] = sum(out.values())
  return out


def unpartitioned_bytes(abstract_state: dict) -> dict[str, int]:
  """P, G, O of a TrainState in bytes, from its dtypes. Gradients have the parameters' dtype."""
  nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))  # noqa: E731
  p = nbytes(abstract_state["params"])
  return {"params": p, "grads": p, "opt_state": nbytes(abstract_state["opt_state"])}


def bytes_on_device(tree: Any, device: jax.Device) -> int:
  """Bytes of `tree`'s arrays that `device` holds, summed over its shards (replicas included)."""
  return sum(shard.data.nbytes for leaf in jax.tree.leaves(tree)
             for shard in leaf.addressable_shards if shard.device == device)
