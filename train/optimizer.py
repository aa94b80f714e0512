"""AdamW with linear warmup and cosine decay, gradient clipping (optax)."""

from __future__ import annotations

import jax
import optax
from flax import nnx

from train.config import TrainSettings


def schedule(lr: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
  """Linear warmup to lr, then cosine decay to lr / 10 at total_steps."""
  warmup = max(1, min(warmup_steps, total_steps))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=lr / 10)


def decay_mask(params: nnx.State) -> nnx.State:
  """True where AdamW decays the weight, read from each parameter's `weight_decay` metadata.

  Norm scales and the embedding table are created with weight_decay=False (model/layers.py).
  """
  return jax.tree.map(
      lambda v: v.replace(v.get_metadata().get("weight_decay", True)), params,
      is_leaf=lambda x: isinstance(x, nnx.Variable))


def make(cfg_train: TrainSettings, total_steps: int) -> optax.GradientTransformation:
  """The optimizer of the train.* section: clip by global norm, then AdamW."""
  return optax.chain(
      optax.clip_by_global_norm(cfg_train.grad_clip),
      optax.adamw(schedule(cfg_train.lr, cfg_train.warmup_steps, total_steps),
                  b1=0.9, b2=0.95, eps=1e-8, weight_decay=cfg_train.weight_decay,
                  mask=decay_mask),
  )
