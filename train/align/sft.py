"""Supervised fine-tuning: next-token loss on the completion only, the prompt masked.

The loss is the mean cross-entropy over the batch's completion tokens (end-of-text included), so
the model learns to answer and to stop, and nothing about the distribution of prompts. SFT can
start from a fresh model, which makes it the first stage of the arithmetic chain; it stops once the
validation accuracy reaches sft.stop_accuracy, leaving DPO and GRPO something to improve. The
accuracy it reports is the test set's, which the stop never reads (train/align/stage.py).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from model import transformer
from model.param_hook import AS_STORED
from train.align import stage as stage_lib
from train.align import data as data_lib
from train import config as config_lib
from train import step as step_lib
from train.config import ConfigError


def loss(graphdef: nnx.GraphDef, aux_weights: tuple[float, float] = (0.0, 0.0),
         z_loss: float = 0.0) -> step_lib.LossFn:
  """SFT's LossFn: cross-entropy summed over the completion tokens, counted per token (so the
  step's loss is their mean over the batch), plus the router losses of an MoE policy and the
  z-loss over the completion tokens at weight z_loss (train.z_loss; train/step.py z_loss_terms).

  batch: {"inputs": (B, T) int32, "targets": (B, T) int32, "mask": (B, T) float32}.
  """

  def loss_fn(params, batch, hook=AS_STORED):
    logits_BxTxV, stats = transformer.apply_with_aux(graphdef, params, batch["inputs"], hook=hook)
    mask_BxT = batch["mask"]
    total = -jnp.sum(step_lib.token_logps(logits_BxTxV, batch["targets"]) * mask_BxT)
    n = jnp.sum(mask_BxT)
    aux, sums = step_lib.router_terms(stats, n, aux_weights)
    z, z_sums = step_lib.z_loss_terms(logits_BxTxV, mask_BxT, z_loss)
    return total + aux + z, n, {"loss": total, **sums, **z_sums}

  return loss_fn


def batch_of(seqs: data_lib.Sequences, idx) -> dict[str, Any]:
  """The rows idx of packed sequences as SFT's batch."""
  return {"inputs": seqs.inputs_NxT[idx], "targets": seqs.targets_NxT[idx],
          "mask": seqs.mask_NxT[idx]}


def train(config: ml_collections.ConfigDict, workdir: str, init_workdir: str = "",
          profile_steps: Optional[tuple[int, int]] = None) -> dict[str, Any]:
  """Runs (or resumes) SFT in `workdir`; returns the summary of the run."""
  stage_settings = config_lib.resolve_stage(config, "sft")
  t = stage_settings.train
  examples = data_lib.load_examples(stage_settings.data.train_path, stage_settings.task, "train")
  run = stage_lib.Run(config, workdir, init_workdir, stage="sft", stage_settings=stage_settings,
                       total_updates=t.steps, profile_steps=profile_steps)
  p_ids, c_ids = data_lib.token_ids(run.policy.tok, [e.prompt for e in examples],
                                    [e.answer for e in examples])
  length = data_lib.needed_length(p_ids, c_ids)
  if length + 1 > run.policy.model_cfg.max_seq_len:
    raise ConfigError(f"the longest example has {length + 1} tokens, more than the model's "
                      f"max_seq_len={run.policy.model_cfg.max_seq_len}")
  seqs = data_lib.pack(p_ids, c_ids, length, run.pad_id)
  step_fn = run.start(loss(run.policy.graphdef, run.aux_weights, run.train.z_loss),
                      jax.eval_shape(lambda: batch_of(seqs, np.arange(t.batch_size))),
                      train_data=f"{len(examples)} examples")

  def train_step(step: int, state):
    idx = data_lib.batch_indices(len(examples), t.batch_size, step, t.seed)
    state, metrics = step_fn(state, batch_of(seqs, idx))
    metrics = dict(metrics)
    metrics["completion_tokens"] = metrics.pop("tokens")
    return state, metrics

  # eval/accuracy is the validation set's (stage.Run.evaluate): the stop is a choice.
  summary = run.loop(train_step,
                     stop_when=lambda r: r["eval/accuracy"] >= stage_settings.stage.stop_accuracy)
  summary["train_examples"] = len(examples)
  return summary


CURVES = ["loss", "grad_norm", "eval/completion_chars"]
