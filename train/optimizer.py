"""AdamW with a linear warmup and a cosine, warmup-stable-decay or constant schedule, gradient
clipping (optax), and muP's per-parameter learning rate multipliers read from the parameters'
metadata."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from train import config as config_lib
from train.config import TrainSettings


def schedule(lr: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
  """Linear warmup to lr, then cosine decay to lr / 10 at total_steps."""
  warmup = max(1, min(warmup_steps, total_steps))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=lr / 10)


# WSD's decay shapes: the fraction of lr left at fraction f in [0, 1] of the decay.
DECAY_SHAPES: dict[str, Callable[[jax.Array], jax.Array]] = {
    "linear": lambda f: 1.0 - f,
    "1-sqrt": lambda f: 1.0 - jnp.sqrt(f),  # Hagele et al. 2024: the best cooldown they tried
    "cosine": lambda f: 0.5 * (1.0 + jnp.cos(jnp.pi * f)),
}


def _warmup(lr: float, warmup_steps: int, total_steps: int) -> tuple[optax.Schedule, int]:
  """(linear warmup from 0 to lr, its length): at least one step (step 0 runs at lr 0), as the
  cosine schedule's."""
  warmup = max(1, min(warmup_steps, total_steps))
  return optax.linear_schedule(0.0, lr, warmup), warmup


def wsd_schedule(lr: float, warmup_steps: int, total_steps: int, decay_fraction: float,
                 decay_shape: str) -> optax.Schedule:
  """Warmup-stable-decay: linear warmup to lr, lr held, then a decay to 0 over the last
  decay_fraction of total_steps (config.wsd_decay_steps) in decay_shape (DECAY_SHAPES).

  The decay starts at S = total_steps - D (never before the warmup ends): step S runs at lr and
  step S + k at lr * shape(k / D), so the last step, total_steps - 1, still updates (at
  lr * shape((D - 1) / D)) and lr reaches 0 at total_steps, where training ends.
  """
  warmup, w = _warmup(lr, warmup_steps, total_steps)
  start = max(w, total_steps - config_lib.wsd_decay_steps(decay_fraction, total_steps))
  n_decay = max(1, total_steps - start)
  shape = DECAY_SHAPES[decay_shape]

  def decay(count: jax.Array) -> jax.Array:
    return lr * shape(jnp.clip(count / n_decay, 0.0, 1.0))

  return optax.join_schedules([warmup, optax.constant_schedule(lr), decay], [w, start])


def constant_schedule(lr: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
  """Linear warmup to lr, then lr for good (a stable run that cooldowns branch from)."""
  warmup, w = _warmup(lr, warmup_steps, total_steps)
  return optax.join_schedules([warmup, optax.constant_schedule(lr)], [w])


def schedule_for(t: TrainSettings, total_steps: int) -> optax.Schedule:
  """The learning rate of train.schedule over total_steps optimizer updates."""
  if t.schedule == "wsd":
    return wsd_schedule(t.lr, t.warmup_steps, total_steps, t.decay_fraction, t.decay_shape)
  if t.schedule == "constant":
    return constant_schedule(t.lr, t.warmup_steps, total_steps)
  return schedule(t.lr, t.warmup_steps, total_steps)


def decay_mask(params: nnx.State) -> nnx.State:
  """True where AdamW decays the weight, read from each parameter's `weight_decay` metadata.

  Norm scales and the embedding table are created with weight_decay=False (model/layers.py).
  """
  return jax.tree.map(
      lambda v: v.replace(v.get_metadata().get("weight_decay", True)), params,
      is_leaf=lambda x: isinstance(x, nnx.Variable))


# muP (Yang et al. 2022, Adam): each parameter kind's learning rate multiplier as a function of
# the width multiplier m = d_model / base_width. Hidden matrices learn at lr / m; the embedding,
# the readout (whose logits the model multiplies by 1/m instead) and vectors at lr.
MUP_LR_MULTIPLIERS: dict[str, Callable[[float], float]] = {
    "embedding": lambda m: 1.0,
    "hidden": lambda m: 1.0 / m,
    "readout": lambda m: 1.0,
    "vector": lambda m: 1.0,
}


def _lr_multiplier(leaf: Any) -> float:
  """A parameter's multiplier from its `mup_kind` and `width_mult` metadata (model/primitives.py
  make_param); 1.0 for a leaf without them."""
  if not isinstance(leaf, nnx.Variable):
    return 1.0
  meta = leaf.get_metadata()
  return float(MUP_LR_MULTIPLIERS[meta.get("mup_kind", "vector")](meta.get("width_mult", 1.0)))


def lr_multipliers(params: nnx.State) -> nnx.State:
  """The tree of params with each parameter's learning rate multiplier (a float) as its value."""
  return jax.tree.map(
      lambda v: v.replace(_lr_multiplier(v)) if isinstance(v, nnx.Variable) else 1.0, params,
      is_leaf=lambda x: isinstance(x, nnx.Variable))


def with_lr_multipliers(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """inner, its updates multiplied per parameter by lr_multipliers(params): a per-parameter
  learning rate (weight decay included, as torch's per-group lr scales AdamW's decay too).

  The state is inner's own, so checkpoints keep their layout; where every multiplier is 1 (the
  standard parametrization, muP at m = 1) the updates pass through untouched, bit for bit.
  """

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("with_lr_multipliers needs the params to read their multipliers")
    updates, state = inner.update(updates, state, params)
    mults = lr_multipliers(params)
    if all(m == 1.0 for m in jax.tree.leaves(mults)):
      return updates, state
    return jax.tree.map(lambda u, m: u if m == 1.0 else u * jnp.asarray(m, u.dtype),
                        updates, mults), state

  return optax.GradientTransformation(inner.init, update)


def make(cfg_train: TrainSettings, total_steps: int) -> optax.GradientTransformation:
  """The optimizer of the train.* section: clip by global norm, then AdamW with each parameter's
  muP learning rate multiplier (all 1 under the standard parametrization)."""
  return optax.chain(
      optax.clip_by_global_norm(cfg_train.grad_clip),
      with_lr_multipliers(
          optax.adamw(schedule_for(cfg_train, total_steps),
                      b1=0.9, b2=0.95, eps=1e-8, weight_decay=cfg_train.weight_decay,
                      mask=decay_mask)),
  )
