"""Logit distillation of a draft model: forward KL(target || draft) at a temperature, over the
target's top-k tokens, as a LossFn of train/step.py's one train step.

A speculative draft is useful in proportion to the acceptance rate sum_x min(p(x), q(x)) at the
temperature it is sampled at (model/speculative.py). Trained on the target's greedy text, a draft
learns the target's argmax, which is what greedy verification checks, and is sharper than the
target's sampling distribution: at temperature 1 alpha fell to 0.41-0.46 (docs/inference.md).
Matching the whole distribution is what sampling needs (Hinton et al. 2015; for drafts, Zhou et
al. 2024, "DistillSpec"): the objective here is

  KL(p_T || q_T) = sum_x p_T(x) (log p_T(x) - log q_T(x)),  p_T = softmax(z_target / T),
                                                            q_T = softmax(z_draft / T),

the forward direction (mass-covering: q is pushed up wherever the target samples), times T^2 so
that its gradient keeps the scale of the cross-entropy's as T changes (Hinton et al.). The
target's distribution is kept as its k most likely tokens and their log-probabilities at
temperature 1 (top_k = 0: the whole vocabulary); at temperature T they are renormalised over
those k tokens, p_T(x_i) = exp(l_i / T) / sum_j exp(l_j / T), while the draft's log q_T is over
its whole vocabulary, so the draft's mass outside the support is what the loss pushes into it.

Where the target's distribution comes from: the target's own forward pass over each draft batch,
computed by `make_teacher` outside the train step (frozen parameters, never differentiated), so
that the target sees exactly the tokens the draft trains on. Precomputed top-k stored beside the
distillation file would spend the target's forward once per row rather than once per epoch (a
105M target's forward over a 16 x 256 batch is about 8x a 3.5M draft's whole step on 2 CPU
cores), but pretraining re-tokenises and packs text into its shards, and a sampled token sequence
does not always tokenise back to itself, so stored per-token targets would not line up with the
rows the draft reads. The live teacher has no such risk; its cost is in docs/inference.md.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from model import transformer
from model.param_hook import AS_STORED, ParamHook
from train import step as step_lib


def teacher_topk(logits_BxTxV: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """(ids (B, T, K) int32, log-probabilities at temperature 1 (B, T, K) float32) of the k most
  likely tokens of each position (k = 0: every token, in vocabulary order)."""
  logp_BxTxV = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
  if k == 0:
    ids_BxTxV = jnp.broadcast_to(jnp.arange(logp_BxTxV.shape[-1], dtype=jnp.int32),
                                 logp_BxTxV.shape)
    return ids_BxTxV, logp_BxTxV
  logp_BxTxK, ids_BxTxK = jax.lax.top_k(logp_BxTxV, k)
  return ids_BxTxK.astype(jnp.int32), logp_BxTxK


def topk_kl(logits_BxTxV: jax.Array, topk_ids_BxTxK: jax.Array, topk_logps_BxTxK: jax.Array,
            temperature: float) -> jax.Array:
  """KL(p_T || q_T) per position, (B, T) float32, without the T^2 factor: p_T the target's top-k
  log-probabilities at temperature 1 sharpened or flattened to T and renormalised over the k
  tokens, q_T = softmax(logits / T) of the draft over its whole vocabulary."""
  log_p_BxTxK = jax.nn.log_softmax(topk_logps_BxTxK.astype(jnp.float32) / temperature, axis=-1)
  z_BxTxV = logits_BxTxV.astype(jnp.float32) / temperature
  log_q_BxTxV = z_BxTxV - jax.nn.logsumexp(z_BxTxV, axis=-1, keepdims=True)
  log_q_BxTxK = jnp.take_along_axis(log_q_BxTxV, topk_ids_BxTxK, axis=-1)
  return jnp.sum(jnp.exp(log_p_BxTxK) * (log_p_BxTxK - log_q_BxTxK), axis=-1)


def kl_lm_loss(graphdef, pad_id: int, *, kl_weight: float, lm_weight: float,
               temperature: float, aux_weights: tuple[float, float] = (0.0, 0.0),
               documents: step_lib.Documents = None, z_loss: float = 0.0) -> step_lib.LossFn:
  """Pretraining's objective for a draft: lm_weight x next-token cross-entropy plus kl_weight x
  T^2 x KL(target || draft) at temperature T, summed over the non-padding targets and counted per
  token (so the step's update is their mean), plus the router losses and the z-loss as lm_loss.

  batch: {"rows": (B, L+1) int32 tokens, "topk_ids": (B, L, K) int32, "topk_logps": (B, L, K)
  float32}: the target's top-k at the L input positions (make_teacher). Metrics: "loss" the
  cross-entropy (so eval_loss and loss compare as in pretraining), "distill/kl" the KL without
  weight or T^2.
  """

  def loss(params, batch, hook: ParamHook = AS_STORED):
    rows_BxL1 = batch["rows"]
    inputs, targets = rows_BxL1[:, :-1], rows_BxL1[:, 1:]
    positions, segment_ids = step_lib.document_layout(inputs, documents)
    logits, stats = transformer.apply_with_aux(
        graphdef, params, inputs, positions, segment_ids, hook=hook)
    ce_sum, n = step_lib.token_loss_sums(logits, targets, pad_id)
    mask_BxT = step_lib.counted_targets(targets, pad_id)
    kl_sum = jnp.sum(topk_kl(logits, batch["topk_ids"], batch["topk_logps"], temperature)
                     * mask_BxT)
    aux, sums = step_lib.router_terms(stats, n, aux_weights)
    z, z_sums = step_lib.z_loss_terms(logits, mask_BxT, z_loss)
    total = lm_weight * ce_sum + kl_weight * temperature ** 2 * kl_sum + aux + z
    return total, n, {"loss": ce_sum, "distill/kl": kl_sum, **sums, **z_sums}

  return loss


def make_teacher(target_graphdef, top_k: int, documents: step_lib.Documents = None,
                 ) -> Callable[[Any, jax.Array], dict]:
  """teacher(target_params, rows_BxL1) -> {"rows", "topk_ids", "topk_logps"}: the draft's batch
  for kl_lm_loss, the target's top-k at every input position, with the draft's document layout
  (packed documents isolated alike). Not jitted; the caller jits it with its shardings."""

  def teacher(target_params, rows_BxL1: jax.Array) -> dict:
    inputs = rows_BxL1[:, :-1]
    logits = transformer.apply(target_graphdef, jax.lax.stop_gradient(target_params), inputs,
                               *step_lib.document_layout(inputs, documents))
    ids, logps = teacher_topk(logits, top_k)
    return {"rows": rows_BxL1, "topk_ids": ids, "topk_logps": logps}

  return teacher


def abstract_batch(batch_size: int, seq_len: int, top_k: int, vocab_size: int) -> dict:
  """The ShapeDtypeStructs of kl_lm_loss's batch (top_k = 0: the whole vocabulary)."""
  k = top_k or vocab_size
  return {"rows": jax.ShapeDtypeStruct((batch_size, seq_len + 1), jnp.int32),
          "topk_ids": jax.ShapeDtypeStruct((batch_size, seq_len, k), jnp.int32),
          "topk_logps": jax.ShapeDtypeStruct((batch_size, seq_len, k), jnp.float32)}
