"""The train and eval steps: pure functions of explicit state, jitted once by the loop.

TrainState is a plain dict so that orbax saves and restores it as it is:
  step       int32 scalar, the number of optimizer updates applied
  params     nnx.State of the model parameters
  opt_state  optax state
  rng        uint32 key data (jax.random.key_data), split every step
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from model import transformer

TrainState = dict[str, Any]
# (params, batch (B, L+1)) -> (objective sum, token count, gradient sum like params, metric sums)
GradFn = Callable[[Any, jax.Array], tuple[jax.Array, jax.Array, Any, dict]]


def init_state(graphdef, params: nnx.State, tx: optax.GradientTransformation, seed: int) -> TrainState:
  return {
      "step": jnp.zeros((), jnp.int32),
      "params": params,
      "opt_state": tx.init(params),
      "rng": jax.random.key_data(jax.random.key(seed + 1)),
  }


def token_loss_sums(logits_BxTxV: jax.Array, targets_BxT: jax.Array, pad_id: int):
  """(sum of next-token cross-entropy over non-padding targets, number of such targets)."""
  mask_BxT = targets_BxT != pad_id
  ce_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV.astype(jnp.float32), targets_BxT)
  return jnp.sum(ce_BxT * mask_BxT), jnp.sum(mask_BxT)


def loss_sums(graphdef, params, batch_BxL1: jax.Array, pad_id: int):
  """(cross-entropy sum, token count) of next-token prediction on a batch of rows."""
  inputs, targets = batch_BxL1[:, :-1], batch_BxL1[:, 1:]
  logits = transformer.apply(graphdef, params, inputs)
  return token_loss_sums(logits, targets, pad_id)


def objective_sums(graphdef, params, batch_BxL1: jax.Array, pad_id: int,
                   aux_weights: tuple[float, float] = (0.0, 0.0)):
  """(objective sum, token count, metric sums) for training.

  The objective is the cross-entropy plus, for an MoE model, the router losses averaged over its
  MoE layers: aux_weights = (load-balancing weight, z-loss weight). Every metric is a
  token-weighted sum, so sums over micro-batches and devices divide by the total token count.
  """
  inputs, targets = batch_BxL1[:, :-1], batch_BxL1[:, 1:]
  logits, stats = transformer.apply_with_aux(graphdef, params, inputs)
  ce_sum, n = token_loss_sums(logits, targets, pad_id)
  sums = {"loss": ce_sum}
  objective = ce_sum
  if stats is not None:
    lb, z = jnp.mean(stats.load_balance_loss), jnp.mean(stats.z_loss)
    objective = objective + n * (aux_weights[0] * lb + aux_weights[1] * z)
    sums.update({
        "moe/load_balance_loss": n * lb, "moe/z_loss": n * z,
        "moe/drop_fraction": n * jnp.mean(stats.drop_fraction),
        "moe/expert_share": n * jnp.mean(stats.expert_share_E, axis=0),
    })
  return objective, n, sums


def make_train_step(
    graphdef, tx: optax.GradientTransformation, *, pad_id: int, grad_accum: int,
    lr_schedule: Callable[[jax.Array], jax.Array],
    data_parallel: Optional[Callable[[GradFn], GradFn]] = None,
    update_sharding: Optional[Any] = None,
    aux_weights: tuple[float, float] = (0.0, 0.0),
):
  """Returns train_step(state, batch (B, L+1)) -> (state, metrics), not yet jitted.

  With grad_accum = A the batch is cut into A micro-batches whose gradients are summed in a scan,
  so the update equals the one on the whole batch while activations are those of B / A rows.

  The sharding of the step (sharding/zero.py) comes in as two hooks, both optional:
    data_parallel    wraps the gradient sum over a batch so that each data-parallel device sums
                     its own rows and the devices' sums are combined by an explicit collective
    update_sharding  pins the optimizer's updates to the layout of its moments, so that under
                     ZeRO 1-3 each device updates only its own slice of the parameters
  """

  def grads_of(params, micro_BxL1):
    (objective, (n, sums)), grads = jax.value_and_grad(
        lambda p: _split_aux(objective_sums(graphdef, p, micro_BxL1, pad_id, aux_weights)),
        has_aux=True)(params)
    return objective, n, grads, sums

  def batch_grads(params, batch_BxL1):
    """(objective sum, token count, gradient sum, metric sums) over the rows of batch_BxL1."""
    if grad_accum == 1:
      return grads_of(params, batch_BxL1)
    # Micro-batch m takes rows m, m + A, m + 2A, ...: every device keeps a share of every
    # micro-batch, so the data-parallel split of the batch needs no data movement.
    micro_AxMxL1 = batch_BxL1.reshape(-1, grad_accum, batch_BxL1.shape[-1]).swapaxes(0, 1)

    def acc(carry, micro):
      return jax.tree.map(jnp.add, carry, grads_of(params, micro)), None

    # The first micro-batch starts the sums (rather than zeros): the carry then has the type of
    # what is added to it, also inside a shard_map where every per-device sum is varying.
    sums, _ = jax.lax.scan(acc, grads_of(params, micro_AxMxL1[0]), micro_AxMxL1[1:])
    return sums

  if data_parallel is not None:
    batch_grads = data_parallel(batch_grads)

  def train_step(state: TrainState, batch_BxL1: jax.Array):
    params = state["params"]
    rng, _step_key = jax.random.split(jax.random.wrap_key_data(state["rng"]))
    _, n, grads, sums = batch_grads(params, batch_BxL1)
    n = jnp.maximum(n, 1)
    grads = jax.tree.map(lambda g: g / n, grads)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    if update_sharding is not None:
      updates = jax.lax.with_sharding_constraint(updates, update_sharding)
    params = optax.apply_updates(params, updates)
    new_state = {
        "step": state["step"] + 1,
        "params": params,
        "opt_state": opt_state,
        "rng": jax.random.key_data(rng),
    }
    metrics = {
        **{name: total / n for name, total in sums.items()},  # loss (cross-entropy), moe/*
        "grad_norm": optax.tree.norm(grads),
        "lr": lr_schedule(state["step"]),
        "tokens": n,
    }
    return new_state, metrics

  return train_step


def _split_aux(out):
  objective, n, sums = out
  return objective, (n, sums)


def make_eval_step(graphdef, *, pad_id: int):
  """eval_step(params, batch) -> (loss sum, token count)."""

  def eval_step(params, batch_BxL1):
    return loss_sums(graphdef, params, batch_BxL1, pad_id)

  return eval_step
