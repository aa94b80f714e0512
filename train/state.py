"""A train state's layout on a mesh and the jitted step over it, for any objective.

The ZeRO stage's layouts (sharding/zero.py) applied to the train state, and train/step.py's one
step over a loss function with those layouts. train/loop.py runs it; this module needs no data
pipeline or tokenizer, so a benchmark can compile the step on a machine that has neither.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import optax
from jax.sharding import Mesh

from model import transformer
from model.config import ModelConfig
from sharding import data_parallel as data_parallel_lib
from sharding import rules as rules_lib
from sharding import zero
from train import kl_distill
from train import optimizer as optimizer_lib
from train import step as step_lib
from train.config import ConfigError, DistillSettings, TrainSettings


@dataclasses.dataclass(frozen=True)
class ShardedTraining:
  """The train state's layout on a mesh and the jitted functions that create and step it."""

  mesh: Mesh
  zero_stage: int
  graphdef: Any
  abstract_state: Any  # TrainState of ShapeDtypeStructs carrying their shardings
  shardings: zero.StateShardings
  batch_sharding: Any  # NamedSharding of every batch leaf, or a tree of them like the batch
  init: Callable[[Any], step_lib.TrainState]  # init_arg -> state, created sharded
  train_step: Callable  # (state, batch) -> (state, metrics); donates the state


def build_sharded_training(
    graphdef: Any, init_params: Callable[[Any], Any], init_arg: Any, loss_fn: step_lib.LossFn,
    tx: optax.GradientTransformation, *, lr_schedule: Callable[[jax.Array], jax.Array],
    grad_accum: int, seed: int, mesh: Mesh, zero_stage: int, abstract_batch: Any = None,
) -> ShardedTraining:
  """Any objective's training on a mesh: the ZeRO stage's layout (sharding/zero.py) applied to
  the train state, and train/step.py's one step over loss_fn with that layout.

  init_params(init_arg) -> params: a fresh model from a PRNG key (pretraining) or a copy of the
  starting checkpoint's parameters (SFT, DPO, GRPO); init(init_arg) then creates the whole state
  directly in its sharded layout (no device holds it whole unless the layout says so).
  abstract_batch: the batch's tree of ShapeDtypeStructs (rows first); its rows are split over the
  data-parallel axes. None: any batch, every leaf split the same way. The step takes explicit
  input and output shardings and donates the state.
  """

  def init_fn(arg):
    return step_lib.init_state(init_params(arg), tx, seed)

  abstract_state = jax.eval_shape(init_fn, init_arg)
  shardings = zero.state_shardings(abstract_state, zero_stage, mesh)
  abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state,
      shardings.state)
  batch_sharding = rules_lib.batch_shardings(mesh, abstract_batch)
  step = step_lib.make_train_step(
      loss_fn, tx, grad_accum=grad_accum, lr_schedule=lr_schedule,
      data_parallel=functools.partial(
          data_parallel_lib.data_parallel, mesh=mesh, param_sharding=shardings.params,
          grad_sharding=shardings.grads),
      update_sharding=shardings.updates)
  return ShardedTraining(
      mesh=mesh, zero_stage=zero_stage, graphdef=graphdef, abstract_state=abstract_state,
      shardings=shardings, batch_sharding=batch_sharding,
      init=jax.jit(init_fn, out_shardings=shardings.state),
      train_step=jax.jit(
          step, in_shardings=(shardings.state, batch_sharding),
          out_shardings=(shardings.state, rules_lib.replicated(mesh)), donate_argnums=0))


def make_sharded_training(
    model_cfg: ModelConfig, t: TrainSettings, mesh: Mesh, zero_stage: int, *,
    pad_id: int, documents: step_lib.Documents = None, answer_marker: Optional[int] = None,
    distill: Optional[DistillSettings] = None,
) -> ShardedTraining:
  """Pretraining's sharded training: a fresh model (init takes a PRNG key), lm_loss on rows
  (B, L+1) of tokens (packed documents isolated as `documents` says, only the answers after
  answer_marker counted when it is given), MoE router losses weighted as model_cfg.moe says, the
  z-loss at train.z_loss. With distill enabled (distill.kl_weight > 0) the objective is
  kl_distill.kl_lm_loss and the batch is its dict (rows and the target's top-k)."""
  graphdef, _ = transformer.abstract(model_cfg)
  aux_weights = (model_cfg.moe.aux_loss_weight, model_cfg.moe.z_loss_weight)
  if distill is not None and distill.enabled:
    if answer_marker is not None:
      raise ConfigError("distill.kl_weight > 0 trains on every target; leave "
                        "train.answer_marker empty")
    loss_fn = kl_distill.kl_lm_loss(
        graphdef, pad_id, kl_weight=distill.kl_weight, lm_weight=distill.lm_weight,
        temperature=distill.temperature, aux_weights=aux_weights, documents=documents,
        z_loss=t.z_loss)
  else:
    loss_fn = step_lib.lm_loss(graphdef, pad_id, aux_weights, documents, answer_marker, t.z_loss)
  return build_sharded_training(
      graphdef, lambda key: transformer.create(model_cfg, key)[1], jax.random.key(t.seed),
      loss_fn, optimizer_lib.make(t, t.steps),
      lr_schedule=optimizer_lib.schedule_for(t, t.steps), grad_accum=t.grad_accum,
      seed=t.seed, mesh=mesh, zero_stage=zero_stage)
