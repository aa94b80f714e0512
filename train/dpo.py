"""Direct Preference Optimisation (Rafailov et al. 2023) and its ipo, hinge and robust variants.

For a pair (x, y_w, y_l), with log-probabilities summed over the completion tokens (prompt and
padding masked) and ref the frozen starting policy:
  h = (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))
  sigmoid  -log sigmoid(beta h)                                       (the paper's loss)
  ipo      (h_avg - 1 / (2 beta))^2, h_avg from length-averaged log-ratios   (Azar et al. 2023)
  hinge    relu(1 - beta h)                                                (SLiC, Zhao et al. 2023)
  robust   (-(1 - e) log sigmoid(beta h) + e log sigmoid(-beta h)) / (1 - 2e), e the assumed rate
           of flipped labels, dpo.label_smoothing                      (Chowdhury et al. 2024)
Reported rewards are the implicit ones, beta * (log pi - log ref) of each completion.

The reference is either live (its parameters kept, its log-probs computed next to every step) or
precomputed once over the whole training set into workdir/reference_logps.npz (dpo.precompute_ref),
after which its parameters are dropped. Both go through the same jitted function, so they give the
same loss.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from model import transformer
from train import align_loop
from train import alignment_data as data_lib
from train import checkpoint as ckpt_lib
from train.config import ConfigError

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")
REF_FILE = "reference_logps.npz"


def sequence_logps(graphdef: nnx.GraphDef, params: nnx.State, inputs_BxT: jax.Array,
                   targets_BxT: jax.Array, mask_BxT: jax.Array) -> jax.Array:
  """Sum over completion tokens of log pi(target | prefix): (B,) float32."""
  logits_BxTxV = transformer.apply(graphdef, params, inputs_BxT)
  logp_BxTxV = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
  logp_BxT = jnp.take_along_axis(logp_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  return jnp.sum(logp_BxT * mask_BxT, axis=-1)


def dpo_loss(policy_chosen_B: jax.Array, policy_rejected_B: jax.Array,
             ref_chosen_B: jax.Array, ref_rejected_B: jax.Array, *, beta: float, loss_type: str,
             label_smoothing: float = 0.0, chosen_len_B: Optional[jax.Array] = None,
             rejected_len_B: Optional[jax.Array] = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(mean loss over the pairs, metrics) from sequence log-probabilities (B,).

  chosen_len_B / rejected_len_B (completion token counts) are needed by ipo only.
  """
  chosen_ratio_B = policy_chosen_B - ref_chosen_B
  rejected_ratio_B = policy_rejected_B - ref_rejected_B
  h_B = chosen_ratio_B - rejected_ratio_B
  if loss_type == "sigmoid":
    loss_B = -jax.nn.log_sigmoid(beta * h_B)
  elif loss_type == "ipo":
    h_avg_B = chosen_ratio_B / chosen_len_B - rejected_ratio_B / rejected_len_B
    loss_B = (h_avg_B - 1.0 / (2.0 * beta)) ** 2
  elif loss_type == "hinge":
    loss_B = jax.nn.relu(1.0 - beta * h_B)
  elif loss_type == "robust":
    e = label_smoothing
    loss_B = (-(1.0 - e) * jax.nn.log_sigmoid(beta * h_B)
              + e * jax.nn.log_sigmoid(-beta * h_B)) / (1.0 - 2.0 * e)
  else:
    raise ValueError(f"dpo.loss_type={loss_type!r} is unknown; allowed: {', '.join(LOSS_TYPES)}")
  chosen_reward_B = beta * chosen_ratio_B
  rejected_reward_B = beta * rejected_ratio_B
  metrics = {
      "rewards/chosen": jnp.mean(chosen_reward_B),
      "rewards/rejected": jnp.mean(rejected_reward_B),
      "rewards/accuracies": jnp.mean((chosen_reward_B > rejected_reward_B).astype(jnp.float32)),
      "rewards/margins": jnp.mean(chosen_reward_B - rejected_reward_B),
      "logps/chosen": jnp.mean(policy_chosen_B),
      "logps/rejected": jnp.mean(policy_rejected_B),
  }
  return jnp.mean(loss_B), metrics


def make_pair_logps(graphdef: nnx.GraphDef) -> Callable:
  """jitted (params, chosen Sequences, rejected Sequences) -> (chosen (B,), rejected (B,)).

  One forward over the two halves stacked on the batch axis.
  """

  def pair_logps(params, c_in, c_tg, c_mask, r_in, r_tg, r_mask):
    both = sequence_logps(graphdef, params, jnp.concatenate([c_in, r_in]),
                          jnp.concatenate([c_tg, r_tg]), jnp.concatenate([c_mask, r_mask]))
    return both[:c_in.shape[0]], both[c_in.shape[0]:]

  return jax.jit(pair_logps)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, *, beta: float,
                    loss_type: str, label_smoothing: float,
                    lr_schedule: Callable[[jax.Array], jax.Array]):
  """train_step(state, chosen (in, tg, mask), rejected (in, tg, mask), ref_chosen_B,
  ref_rejected_B) -> (state, metrics), not jitted."""

  def loss_fn(params, c_in, c_tg, c_mask, r_in, r_tg, r_mask, ref_c_B, ref_r_B):
    b = c_in.shape[0]
    both_B2 = sequence_logps(graphdef, params, jnp.concatenate([c_in, r_in]),
                             jnp.concatenate([c_tg, r_tg]), jnp.concatenate([c_mask, r_mask]))
    return dpo_loss(both_B2[:b], both_B2[b:], ref_c_B, ref_r_B, beta=beta, loss_type=loss_type,
                    label_smoothing=label_smoothing, chosen_len_B=jnp.sum(c_mask, -1),
                    rejected_len_B=jnp.sum(r_mask, -1))

  def train_step(state, chosen, rejected, ref_c_B, ref_r_B):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], *chosen, *rejected, ref_c_B, ref_r_B)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = dict(state, step=state["step"] + 1, opt_state=opt_state,
                     params=optax.apply_updates(state["params"], updates))
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                   lr=lr_schedule(state["step"]))
    return new_state, metrics

  return train_step


def precompute_reference(pair_logps: Callable, ref_params: nnx.State, chosen: data_lib.Sequences,
                         rejected: data_lib.Sequences, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Reference log-probs of every pair, (N,) each, in batches of batch_size (last one padded)."""
  n = len(chosen.inputs_NxT)
  idx = np.arange(n + (-n % batch_size)) % n
  out_c, out_r = [], []
  for i in range(0, len(idx), batch_size):
    rows = idx[i:i + batch_size]
    c, r = pair_logps(ref_params, *(a[rows] for a in chosen), *(a[rows] for a in rejected))
    out_c.append(np.asarray(c))
    out_r.append(np.asarray(r))
  return np.concatenate(out_c)[:n], np.concatenate(out_r)[:n]


def validate(config: ml_collections.ConfigDict) -> None:
  if "dpo" not in config:
    raise ConfigError("config has no section 'dpo'")
  d = config.dpo
  if d.loss_type not in LOSS_TYPES:
    raise ConfigError(f"dpo.loss_type={d.loss_type!r} is unknown; allowed: {', '.join(LOSS_TYPES)}")
  if not d.beta > 0:
    raise ConfigError(f"dpo.beta must be positive, got {d.beta!r}")
  if not 0.0 <= d.label_smoothing < 0.5:
    raise ConfigError(f"dpo.label_smoothing must be in [0, 0.5), got {d.label_smoothing!r}")


def train(config: ml_collections.ConfigDict, workdir: str, init_workdir: str) -> dict[str, Any]:
  """Runs (or resumes) DPO in `workdir`, starting from (and referenced to) init_workdir."""
  validate(config)
  if not init_workdir:
    raise ConfigError("DPO needs --init_workdir: the policy to start from and to stay near")
  pairs = data_lib.load_pairs(config.data.train_path, config.task, config.train.seed)
  run = align_loop.Run(config, workdir, init_workdir, stage="dpo",
                       total_updates=config.train.steps)
  tok, d, t = run.policy.tok, config.dpo, config.train
  prompts = [p.prompt for p in pairs]
  pc, cc = data_lib.token_ids(tok, prompts, [p.chosen for p in pairs])
  pr, cr = data_lib.token_ids(tok, prompts, [p.rejected for p in pairs])
  length = max(data_lib.needed_length(pc, cc), data_lib.needed_length(pr, cr))
  if length + 1 > run.policy.model_cfg.max_seq_len:
    raise ConfigError(f"the longest pair has {length + 1} tokens, more than the model's "
                      f"max_seq_len={run.policy.model_cfg.max_seq_len}")
  chosen = data_lib.pack(pc, cc, length, run.pad_id)
  rejected = data_lib.pack(pr, cr, length, run.pad_id)
  pair_logps = make_pair_logps(run.policy.graphdef)

  # The reference is the starting policy; run.policy.params were read from init_workdir.
  ref_params = run.policy.params
  ref_path = os.path.join(workdir, REF_FILE)
  ref_all = None
  if d.precompute_ref:
    if os.path.exists(ref_path):
      stored = np.load(ref_path)
      ref_all = (stored["chosen"], stored["rejected"])
    else:
      ref_all = precompute_reference(pair_logps, ref_params, chosen, rejected, t.batch_size)
      np.savez(ref_path + ".tmp.npz", chosen=ref_all[0], rejected=ref_all[1])
      os.replace(ref_path + ".tmp.npz", ref_path)
    if len(ref_all[0]) != len(pairs):
      raise ConfigError(f"{ref_path} holds {len(ref_all[0])} pairs but the data has {len(pairs)}; "
                        "use a new --workdir")
    ref_params = None  # nothing of the reference stays in memory
    run.policy.params = None
  step_fn = jax.jit(make_train_step(
      run.policy.graphdef, run.tx, beta=d.beta, loss_type=d.loss_type,
      label_smoothing=d.label_smoothing, lr_schedule=run.lr_schedule), donate_argnums=0)

  def train_step(step: int, state):
    idx = data_lib.batch_indices(len(pairs), t.batch_size, step, t.seed)
    c = tuple(a[idx] for a in chosen)
    r = tuple(a[idx] for a in rejected)
    if ref_all is not None:
      ref_c, ref_r = ref_all[0][idx], ref_all[1][idx]
    else:
      ref_c, ref_r = pair_logps(ref_params, *c, *r)
    return step_fn(state, c, r, ref_c, ref_r)

  summary = run.loop(train_step)
  summary.update(train_pairs=len(pairs), loss_type=d.loss_type, beta=d.beta,
                 reference="precomputed" if d.precompute_ref else "live")
  return summary


CURVES = ["loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected",
          "logps/chosen", "logps/rejected"]
