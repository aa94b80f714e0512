"""The train and eval steps: pure functions of explicit state, jitted once by the loop.

One train step serves every objective. An objective is a LossFn: from the parameters and one
batch (any tree of arrays whose leading dimension is the batch's rows) to the sum of its
objective over the rows, the count it is averaged over, and token-weighted metric sums.
Pretraining's cross-entropy (lm_loss below), SFT's masked cross-entropy, DPO and GRPO
(train/align/sft.py, dpo.py, grpo.py) are each such a function; the step around them (gradient
accumulation, the data-parallel sum at any ZeRO stage, the optimizer update) is this one.

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

from model import masks, transformer
from model.param_hook import AS_STORED, ParamHook
from sharding import data_parallel as dp_lib

TrainState = dict[str, Any]
# (params, batch, hook) -> (objective sum, count, metric sums). The hook goes to the model
# (model/param_hook.py): how the step's sharding hands each layer its parameters.
LossFn = Callable[[Any, Any, ParamHook], tuple[jax.Array, jax.Array, dict]]


def init_state(params: nnx.State, tx: optax.GradientTransformation, seed: int) -> TrainState:
  return {
      "step": jnp.zeros((), jnp.int32),
      "params": params,
      "opt_state": tx.init(params),
      "rng": jax.random.key_data(jax.random.key(seed + 1)),
  }


def token_logps(logits_BxTxV: jax.Array, targets_BxT: jax.Array,
                temperature: float = 1.0) -> jax.Array:
  """log softmax(logits / temperature)[target] per position, (B, T) float32: the one token
  log-probability of every objective (cross-entropy is its negative).

  Computed as the target's logit minus the logsumexp over the vocabulary, so that no (B, T, V)
  log-softmax is kept beyond the logits themselves.
  """
  z_BxTxV = logits_BxTxV.astype(jnp.float32) / temperature
  target_BxT = jnp.take_along_axis(z_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  return target_BxT - jax.nn.logsumexp(z_BxTxV, axis=-1)


def counted_targets(targets_BxT: jax.Array, pad_id: int,
                    keep_BxT: Optional[jax.Array] = None) -> jax.Array:
  """(B, T) bool: the targets the loss counts, those that are not padding (and that keep_BxT
  marks, when given)."""
  mask_BxT = targets_BxT != pad_id
  return mask_BxT if keep_BxT is None else mask_BxT & keep_BxT


def token_loss_sums(logits_BxTxV: jax.Array, targets_BxT: jax.Array, pad_id: int,
                    keep_BxT: Optional[jax.Array] = None):
  """(sum of next-token cross-entropy over non-padding targets, number of such targets); with
  keep_BxT (bool), only over the targets it marks."""
  mask_BxT = counted_targets(targets_BxT, pad_id, keep_BxT)
  ce_BxT = -token_logps(logits_BxTxV, targets_BxT)
  return jnp.sum(ce_BxT * mask_BxT), jnp.sum(mask_BxT)


def z_loss_sum(logits_BxTxV: jax.Array, mask_BxT: jax.Array) -> jax.Array:
  """Sum over the positions mask_BxT marks of logsumexp(logits)^2, float32: PaLM's z-loss
  (Chowdhery et al. 2022) before its weight and the mean. It pulls log Z, the softmax's
  normaliser, towards 0, so that the logits cannot drift upwards together (the cross-entropy
  alone does not see a shift shared by every logit)."""
  lse_BxT = jax.nn.logsumexp(logits_BxTxV.astype(jnp.float32), axis=-1)
  return jnp.sum(jnp.square(lse_BxT) * mask_BxT)


# How packed documents are delimited in a row: (boundary token id, whether a document starts
# right after it rather than at it); see model.masks.packed_documents. None: the row is one text.
Documents = Optional[tuple[int, bool]]


def document_layout(inputs_BxT: jax.Array, documents: Documents):
  """(positions, segment ids) for the model: each document attends only to itself and sees
  positions from 0, as it would alone; (None, None) when the rows are not packed documents."""
  if documents is None:
    return None, None
  boundary_id, starts_after = documents
  return masks.packed_documents(inputs_BxT, boundary_id, starts_after=starts_after)


def answer_targets(inputs_BxT: jax.Array, marker_id: Optional[int]) -> Optional[jax.Array]:
  """(B, T) bool: the targets that answer a question "MARKER KEY" -> VALUE, i.e. those whose input
  one position earlier is the marker; None (every target) when marker_id is None.

  Associative-recall training (MQAR, Arora et al. 2023, "Zoology") puts the loss on the answers
  only: on random keys and values every other target is noise, and the few answers would be a
  small share of a whole-sequence gradient.
  """
  if marker_id is None:
    return None
  marker_BxT = inputs_BxT == marker_id
  return jnp.pad(marker_BxT[:, :-1], ((0, 0), (1, 0)))  # target t answers when input t - 1 is it


def loss_sums(graphdef, params, batch_BxL1: jax.Array, pad_id: int, documents: Documents = None,
              answer_marker: Optional[int] = None):
  """(cross-entropy sum, token count) of next-token prediction on a batch of rows; with
  answer_marker, on the answer targets only (answer_targets)."""
  inputs, targets = batch_BxL1[:, :-1], batch_BxL1[:, 1:]
  logits = transformer.apply(graphdef, params, inputs, *document_layout(inputs, documents))
  return token_loss_sums(logits, targets, pad_id, answer_targets(inputs, answer_marker))


def router_terms(stats, n: jax.Array, aux_weights: tuple[float, float]):
  """(objective term, metric sums) of an MoE model's router statistics, weighted by the count n.

  The router losses are averaged over the MoE layers and scaled by aux_weights = (load-balancing
  weight, z-loss weight); every metric is a sum weighted by n, so sums over micro-batches and
  devices divide by the total count. Zero and no metrics for a dense model (stats None).
  """
  if stats is None:
    return jnp.zeros(()), {}
  lb, z = jnp.mean(stats.load_balance_loss), jnp.mean(stats.z_loss)
  sums = {
      "moe/load_balance_loss": n * lb, "moe/z_loss": n * z,
      "moe/drop_fraction": n * jnp.mean(stats.drop_fraction),
      "moe/expert_share": n * jnp.mean(stats.expert_share_E, axis=0),
  }
  return n * (aux_weights[0] * lb + aux_weights[1] * z), sums


def z_loss_terms(logits_BxTxV: jax.Array, mask_BxT: jax.Array, weight: float):
  """(objective term, metric sums) of the z-loss at `weight` (train.z_loss) over the counted
  positions; zero and no metric at weight 0. The metric "z_loss" is the sum of logsumexp^2, so
  the step reports its mean over the counted tokens, unweighted."""
  if not weight:
    return jnp.zeros(()), {}
  z_sum = z_loss_sum(logits_BxTxV, mask_BxT)
  return weight * z_sum, {"z_loss": z_sum}


def lm_loss(graphdef, pad_id: int, aux_weights: tuple[float, float] = (0.0, 0.0),
            documents: Documents = None, answer_marker: Optional[int] = None,
            z_loss: float = 0.0) -> LossFn:
  """Pretraining: next-token cross-entropy over rows (B, L+1), plus the router losses and the
  z-loss at weight z_loss (z_loss_terms). With `documents`, the documents packed into a row are
  isolated (document_layout); with `answer_marker` (a token id), only the answers after it count
  (answer_targets)."""

  def loss(params, batch_BxL1, hook: ParamHook = AS_STORED):
    inputs, targets = batch_BxL1[:, :-1], batch_BxL1[:, 1:]
    positions, segment_ids = document_layout(inputs, documents)
    logits, stats = transformer.apply_with_aux(
        graphdef, params, inputs, positions, segment_ids, hook=hook)
    keep = answer_targets(inputs, answer_marker)
    ce_sum, n = token_loss_sums(logits, targets, pad_id, keep)
    aux, sums = router_terms(stats, n, aux_weights)
    z, z_sums = z_loss_terms(logits, counted_targets(targets, pad_id, keep), z_loss)
    return ce_sum + aux + z, n, {"loss": ce_sum, **sums, **z_sums}

  return loss


def summed_grads(loss_fn: LossFn, grad_accum: int) -> dp_lib.GradFn:
  """batch_grads(diff, batch, view) -> (objective sum, count, gradient sum, metric sums) over
  the rows of batch, with respect to diff as view says the model reads it (dp_lib.ParamView).

  With grad_accum = A the batch is cut into A micro-batches whose sums are added in a scan, so
  the result equals the whole batch's while activations are those of B / A rows.
  """

  def grads_of(diff, micro, view: dp_lib.ParamView):
    def objective(d):
      total, n, sums = loss_fn(view.assemble(d), micro, view.hook)
      return total, (n, sums)

    (total, (n, sums)), grads = jax.value_and_grad(objective, has_aux=True)(diff)
    return total, n, grads, sums

  def batch_grads(diff, batch, view: dp_lib.ParamView):
    if grad_accum == 1:
      return grads_of(diff, batch, view)
    # Micro-batch m takes rows m, m + A, m + 2A, ...: every device keeps a share of every
    # micro-batch, so the data-parallel split of the batch needs no data movement.
    micro = jax.tree.map(
        lambda x: x.reshape(-1, grad_accum, *x.shape[1:]).swapaxes(0, 1), batch)

    def acc(carry, micro_i):
      return jax.tree.map(jnp.add, carry, grads_of(diff, micro_i, view)), None

    # The first micro-batch starts the sums (rather than zeros): the carry then has the type of
    # what is added to it, also inside a shard_map where every per-device sum is varying.
    first = jax.tree.map(lambda x: x[0], micro)
    rest = jax.tree.map(lambda x: x[1:], micro)
    sums, _ = jax.lax.scan(acc, grads_of(diff, first, view), rest)
    return sums

  return batch_grads


def make_train_step(
    loss_fn: LossFn, tx: optax.GradientTransformation, *, grad_accum: int,
    lr_schedule: Callable[[jax.Array], jax.Array],
    data_parallel: Optional[Callable[[dp_lib.GradFn], Callable]] = None,
    update_sharding: Optional[Any] = None,
):
  """Returns train_step(state, batch) -> (state, metrics), not yet jitted.

  The update is the gradient of loss_fn's objective sum divided by its count, summed over the
  whole batch (in grad_accum micro-batches: summed_grads). metrics: every metric sum divided by
  the count, the gradient norm, the learning rate, and the count ("tokens").

  The sharding of the step (sharding/zero.py) comes in as two hooks, both optional:
    data_parallel    wraps the gradient sum over a batch so that each data-parallel device sums
                     its own rows and the devices' sums are combined by explicit collectives, at
                     ZeRO 2 and 3 layer by layer inside the backward pass
    update_sharding  pins the optimizer's updates to the layout of its moments, so that under
                     ZeRO 1-3 each device updates only its own slice of the parameters
  """
  batch_grads = summed_grads(loss_fn, grad_accum)
  if data_parallel is not None:
    summed = data_parallel(batch_grads)
  else:
    summed = lambda params, batch: batch_grads(params, batch, dp_lib.WHOLE)  # noqa: E731

  def train_step(state: TrainState, batch):
    params = state["params"]
    _, n, grads, sums = summed(params, batch)
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
        "rng": jax.random.key_data(jax.random.split(jax.random.wrap_key_data(state["rng"]))[0]),
    }
    metrics = {
        **{name: total / n for name, total in sums.items()},  # loss, moe/*, objective metrics
        "grad_norm": optax.tree.norm(grads),
        "lr": lr_schedule(state["step"]),
        "tokens": n,
    }
    return new_state, metrics

  return train_step


def eval_metric_sums(graphdef, params, batch_BxL1: jax.Array, pad_id: int,
                     documents: Documents = None, answer_marker: Optional[int] = None):
  """(cross-entropy sum, token count, metric sums) as loss_sums, with an MoE model's router
  statistics (drop fraction, expert shares, router losses: router_terms) as sums weighted by the
  count, so that sums over batches divide by the total count. No router metrics when dense."""
  inputs, targets = batch_BxL1[:, :-1], batch_BxL1[:, 1:]
  logits, stats = transformer.apply_with_aux(graphdef, params, inputs,
                                             *document_layout(inputs, documents))
  ce_sum, n = token_loss_sums(logits, targets, pad_id, answer_targets(inputs, answer_marker))
  return ce_sum, n, router_terms(stats, n, (0.0, 0.0))[1]


def make_eval_metrics_step(graphdef, *, pad_id: int, documents: Documents = None,
                           answer_marker: Optional[int] = None):
  """eval_step(params, batch) -> (loss sum, token count, metric sums): eval_metric_sums. For an
  MoE model's evaluation, pass the graphdef of ModelConfig.for_eval (evaluation's dispatch)."""

  def eval_step(params, batch_BxL1):
    return eval_metric_sums(graphdef, params, batch_BxL1, pad_id, documents, answer_marker)

  return eval_step


def make_eval_step(graphdef, *, pad_id: int, documents: Documents = None,
                   answer_marker: Optional[int] = None):
  """eval_step(params, batch) -> (loss sum, token count); documents, answer_marker as in lm_loss."""

  def eval_step(params, batch_BxL1):
    return loss_sums(graphdef, params, batch_BxL1, pad_id, documents, answer_marker)

  return eval_step
