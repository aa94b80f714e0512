"""Supervised fine-tuning: next-token loss on the completion only, the prompt masked.

The loss is the mean cross-entropy over the batch's completion tokens (end-of-text included), so
the model learns to answer and to stop, and nothing about the distribution of prompts. SFT can
start from a fresh model, which makes it the first stage of the arithmetic chain; it stops once the
held-out accuracy reaches sft.stop_accuracy, leaving DPO and GRPO something to improve.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from model import transformer
from train import align_loop
from train import alignment_data as data_lib
from train.config import ConfigError


def completion_loss_sums(logits_BxTxV: jax.Array, targets_BxT: jax.Array,
                         mask_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum of cross-entropy over masked-in targets, their count)."""
  ce_BxT = optax.softmax_cross_entropy_with_integer_labels(
      logits_BxTxV.astype(jnp.float32), targets_BxT)
  return jnp.sum(ce_BxT * mask_BxT), jnp.sum(mask_BxT)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    lr_schedule: Callable[[jax.Array], jax.Array]):
  """train_step(state, inputs_BxT, targets_BxT, mask_BxT) -> (state, metrics), not jitted."""

  def loss_fn(params, inputs_BxT, targets_BxT, mask_BxT):
    logits_BxTxV = transformer.apply(graphdef, params, inputs_BxT)
    total, n = completion_loss_sums(logits_BxTxV, targets_BxT, mask_BxT)
    return total / jnp.maximum(n, 1.0), n

  def train_step(state, inputs_BxT, targets_BxT, mask_BxT):
    (loss, n), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], inputs_BxT, targets_BxT, mask_BxT)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = dict(state, step=state["step"] + 1, opt_state=opt_state,
                     params=optax.apply_updates(state["params"], updates))
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads),
                       "lr": lr_schedule(state["step"]), "completion_tokens": n}

  return train_step


def validate(config: ml_collections.ConfigDict) -> None:
  if "sft" not in config:
    raise ConfigError("config has no section 'sft'")
  if not 0.0 < config.sft.stop_accuracy <= 1.0:
    raise ConfigError(
        f"sft.stop_accuracy must be in (0, 1] (1 = never stop early), got {config.sft.stop_accuracy!r}")


def train(config: ml_collections.ConfigDict, workdir: str, init_workdir: str = "") -> dict[str, Any]:
  """Runs (or resumes) SFT in `workdir`; returns the summary of the run."""
  validate(config)
  examples = data_lib.load_examples(config.data.train_path, config.task, "train")
  run = align_loop.Run(config, workdir, init_workdir, stage="sft",
                       total_updates=config.train.steps)
  p_ids, c_ids = data_lib.token_ids(run.policy.tok, [e.prompt for e in examples],
                                    [e.answer for e in examples])
  length = data_lib.needed_length(p_ids, c_ids)
  if length + 1 > run.policy.model_cfg.max_seq_len:
    raise ConfigError(f"the longest example has {length + 1} tokens, more than the model's "
                      f"max_seq_len={run.policy.model_cfg.max_seq_len}")
  seqs = data_lib.pack(p_ids, c_ids, length, run.pad_id)
  step_fn = jax.jit(make_train_step(run.policy.graphdef, run.tx, run.lr_schedule),
                    donate_argnums=0)
  t = config.train

  def train_step(step: int, state):
    idx = data_lib.batch_indices(len(examples), t.batch_size, step, t.seed)
    return step_fn(state, seqs.inputs_NxT[idx], seqs.targets_NxT[idx], seqs.mask_NxT[idx])

  summary = run.loop(train_step,
                     stop_when=lambda r: r["eval/accuracy"] >= config.sft.stop_accuracy)
  summary["train_examples"] = len(examples)
  return summary


CURVES = ["loss", "grad_norm", "eval/completion_chars"]
