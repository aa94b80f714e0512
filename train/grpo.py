"""Group Relative Policy Optimisation (Shao et al. 2024), with the Dr. GRPO and DAPO variants.

One step: P prompts, G completions each from the KV-cache sampler, rewards from the weighted reward
functions (train/rewards.py), advantages normalised within each group of G,
  A_i = (r_i - mean(r)) / (std(r) + eps)        scale_rewards = "group"
  A_i = r_i - mean(r)                           scale_rewards = "none" (Dr. GRPO)
applied to every completion token of sample i; then mu optimizer updates on that batch, each
minimising per token
  -min(rho A, clip(rho, 1 - epsilon, 1 + epsilon_high) A) + beta KL,   rho = pi / pi_old,
KL the k3 estimator ref/pi - log(ref/pi) - 1 against the frozen starting policy (not held when
beta = 0). pi_old is the policy that sampled the batch: with mu = 1 it is pi itself, so rho = 1
and nothing is clipped. Token terms are aggregated by loss_agg:
  grpo     mean over sequences of each sequence's token mean
  dr_grpo  sum over the batch's tokens / (sequences * max_new_tokens), a constant: no length bias
  dapo     sum over the batch's tokens / their number (token-level mean)
Prompt and padding tokens are masked out of every sum; a completion's end-of-text is in (stopping
is an action). Groups whose G rewards are equal have zero advantages: they contribute no policy
gradient, only the KL term.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from model import decode, sampling, transformer
from train import align_loop
from train import alignment_data as data_lib
from train import rewards as rewards_lib
from train.config import ConfigError

SCALE_REWARDS = ("group", "none")
LOSS_AGGS = ("grpo", "dr_grpo", "dapo")


def group_advantages(rewards_PxG: jax.Array, *, scale_rewards: str, eps: float = 1e-4) -> jax.Array:
  """Advantages (P, G): rewards centred within each group, divided by its std for 'group'.

  The std is the population one (ddof 0): with G = 2 and rewards (0, 1) the advantages are
  +-1 / (1 + 2 eps), not +-0.71.
  """
  centred_PxG = rewards_PxG - jnp.mean(rewards_PxG, axis=1, keepdims=True)
  if scale_rewards == "none":
    return centred_PxG
  return centred_PxG / (jnp.std(rewards_PxG, axis=1, keepdims=True) + eps)


def token_logps(graphdef: nnx.GraphDef, params: nnx.State, inputs_NxT: jax.Array,
                targets_NxT: jax.Array, temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """(log pi(target), entropy of pi) per position, (N, T) each, pi = softmax(logits / temperature).

  The temperature is the sampler's: the ratio and the KL are then of the distribution the
  completions were really drawn from.
  """
  logits_NxTxV = transformer.apply(graphdef, params, inputs_NxT).astype(jnp.float32) / temperature
  logp_NxTxV = jax.nn.log_softmax(logits_NxTxV, axis=-1)
  logp_NxT = jnp.take_along_axis(logp_NxTxV, targets_NxT[..., None], axis=-1)[..., 0]
  entropy_NxT = -jnp.sum(jnp.exp(logp_NxTxV) * logp_NxTxV, axis=-1)
  return logp_NxT, entropy_NxT


def k3_kl(logp_NxT: jax.Array, ref_logp_NxT: jax.Array) -> jax.Array:
  """k3 estimator of KL(pi || ref) per token: ref/pi - log(ref/pi) - 1 >= 0, 0 where pi = ref."""
  log_ratio = ref_logp_NxT - logp_NxT
  return jnp.exp(log_ratio) - log_ratio - 1.0


def grpo_loss(logp_NxT: jax.Array, old_logp_NxT: Optional[jax.Array],
              ref_logp_NxT: Optional[jax.Array], advantages_N: jax.Array, mask_NxT: jax.Array, *,
              epsilon: float, epsilon_high: float, beta: float, loss_agg: str,
              max_new_tokens: int) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(loss, metrics) of one update. old_logp None = on-policy (pi_old = stop_gradient(pi))."""
  if old_logp_NxT is None:
    old_logp_NxT = jax.lax.stop_gradient(logp_NxT)
  ratio_NxT = jnp.exp(logp_NxT - old_logp_NxT)
  adv_Nx1 = advantages_N[:, None]
  unclipped_NxT = ratio_NxT * adv_Nx1
  clipped_NxT = jnp.clip(ratio_NxT, 1.0 - epsilon, 1.0 + epsilon_high) * adv_Nx1
  per_token_NxT = -jnp.minimum(unclipped_NxT, clipped_NxT)
  metrics = {}
  if beta > 0:
    kl_NxT = k3_kl(logp_NxT, ref_logp_NxT)
    per_token_NxT = per_token_NxT + beta * kl_NxT
    metrics["kl"] = _token_mean(kl_NxT, mask_NxT)
  n_tokens = jnp.maximum(jnp.sum(mask_NxT), 1.0)
  if loss_agg == "grpo":
    per_seq_N = jnp.sum(per_token_NxT * mask_NxT, -1) / jnp.maximum(jnp.sum(mask_NxT, -1), 1.0)
    loss = jnp.mean(per_seq_N)
  elif loss_agg == "dr_grpo":
    loss = jnp.sum(per_token_NxT * mask_NxT) / (mask_NxT.shape[0] * max_new_tokens)
  elif loss_agg == "dapo":
    loss = jnp.sum(per_token_NxT * mask_NxT) / n_tokens
  else:
    raise ValueError(f"grpo.loss_agg={loss_agg!r} is unknown; allowed: {', '.join(LOSS_AGGS)}")
  # A token is clipped when the clip removed its gradient: rho left the trust region on the side
  # the advantage pushes it to.
  clipped = ((ratio_NxT < 1.0 - epsilon) & (adv_Nx1 < 0)) | ((ratio_NxT > 1.0 + epsilon_high) & (adv_Nx1 > 0))
  metrics["clip_ratio"] = _token_mean(clipped.astype(jnp.float32), mask_NxT)
  metrics["ratio_mean"] = _token_mean(ratio_NxT, mask_NxT)
  return loss, metrics


def _token_mean(x_NxT: jax.Array, mask_NxT: jax.Array) -> jax.Array:
  return jnp.sum(x_NxT * mask_NxT) / jnp.maximum(jnp.sum(mask_NxT), 1.0)


def make_update(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, g: ml_collections.ConfigDict,
                lr_schedule: Callable[[jax.Array], jax.Array]):
  """update(state, inputs_NxT, targets_NxT, mask_NxT, advantages_N, old_logp_NxT | None,
  ref_logp_NxT | None) -> (state, metrics): one optimizer step, not jitted."""

  def loss_fn(params, inputs_NxT, targets_NxT, mask_NxT, adv_N, old_logp_NxT, ref_logp_NxT):
    logp_NxT, entropy_NxT = token_logps(graphdef, params, inputs_NxT, targets_NxT, g.temperature)
    loss, metrics = grpo_loss(
        logp_NxT, old_logp_NxT, ref_logp_NxT, adv_N, mask_NxT, epsilon=g.epsilon,
        epsilon_high=g.epsilon_high, beta=g.beta, loss_agg=g.loss_agg,
        max_new_tokens=g.max_new_tokens)
    metrics["entropy"] = _token_mean(entropy_NxT, mask_NxT)
    return loss, metrics

  def update(state, inputs_NxT, targets_NxT, mask_NxT, adv_N, old_logp_NxT, ref_logp_NxT):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], inputs_NxT, targets_NxT, mask_NxT, adv_N, old_logp_NxT, ref_logp_NxT)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = dict(state, step=state["step"] + 1, opt_state=opt_state,
                     params=optax.apply_updates(state["params"], updates))
    return new_state, dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                           lr=lr_schedule(state["step"]))

  return update


def validate(config: ml_collections.ConfigDict) -> dict[str, float]:
  """Checks config.grpo; returns the reward weights."""
  if "grpo" not in config:
    raise ConfigError("config has no section 'grpo'")
  g = config.grpo
  if not g.group_size >= 2:
    raise ConfigError(f"grpo.group_size must be >= 2 (advantages compare samples), got {g.group_size!r}")
  for name in ("prompts_per_step", "mu", "max_new_tokens"):
    if not g[name] >= 1:
      raise ConfigError(f"grpo.{name} must be >= 1, got {g[name]!r}")
  if not g.epsilon > 0 or not g.epsilon_high >= g.epsilon:
    raise ConfigError(f"grpo.epsilon must be positive and grpo.epsilon_high >= grpo.epsilon, got "
                      f"{g.epsilon!r} and {g.epsilon_high!r}")
  if not g.beta >= 0:
    raise ConfigError(f"grpo.beta must be >= 0 (0 = no reference model), got {g.beta!r}")
  if not g.temperature > 0:
    raise ConfigError(f"grpo.temperature must be positive, got {g.temperature!r}")
  if g.loss_agg not in LOSS_AGGS:
    raise ConfigError(f"grpo.loss_agg={g.loss_agg!r} is unknown; allowed: {', '.join(LOSS_AGGS)}")
  if g.scale_rewards not in SCALE_REWARDS:
    raise ConfigError(
        f"grpo.scale_rewards={g.scale_rewards!r} is unknown; allowed: {', '.join(SCALE_REWARDS)}")
  try:
    return rewards_lib.parse_weights(g.rewards)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def train(config: ml_collections.ConfigDict, workdir: str, init_workdir: str) -> dict[str, Any]:
  """Runs (or resumes) GRPO in `workdir`, starting from (and referenced to) init_workdir."""
  weights = validate(config)
  if not init_workdir:
    raise ConfigError("GRPO needs --init_workdir: a policy that already solves some prompts")
  g, t = config.grpo, config.train
  examples = data_lib.load_examples(config.data.train_path, config.task, "train")
  run = align_loop.Run(config, workdir, init_workdir, stage="grpo", total_updates=t.steps * g.mu)
  policy = run.policy
  p_len = data_lib.prompt_length(policy.tok, [e.prompt for e in examples])
  if p_len + g.max_new_tokens > policy.model_cfg.max_seq_len:
    raise ConfigError(f"prompts of {p_len} tokens plus grpo.max_new_tokens={g.max_new_tokens} "
                      f"exceed the model's max_seq_len={policy.model_cfg.max_seq_len}")
  prompts = data_lib.encode_prompts(policy.tok, [e.prompt for e in examples], p_len)
  spec = decode.DecodeSpec(g.max_new_tokens, run.eot_id,
                           sampling.SamplingConfig(temperature=g.temperature))
  generate = decode.make_generate(policy.model_cfg, policy.graphdef, spec)
  logps_fn = jax.jit(lambda p, i, tg: token_logps(policy.graphdef, p, i, tg, g.temperature)[0])
  update = jax.jit(make_update(policy.graphdef, run.tx, g, run.lr_schedule), donate_argnums=0)
  ref_params = policy.params if g.beta > 0 else None  # the frozen starting policy
  policy.params = None
  n_rows = g.prompts_per_step * g.group_size

  def train_step(step: int, state):
    idx = np.repeat(data_lib.batch_indices(len(examples), g.prompts_per_step, step, t.seed),
                    g.group_size)
    key, sample_key = jax.random.split(jax.random.wrap_key_data(state["rng"]))
    state = dict(state, rng=jax.random.key_data(key))
    out = generate(state["params"], jnp.asarray(prompts.tokens_NxP[idx]),
                   jnp.asarray(prompts.lengths_N[idx]), jax.random.split(sample_key, n_rows))
    completions = decode.trim(out)
    samples = [rewards_lib.sample_of(policy.tok, examples[i].prompt, ids, run.eot_id,
                                     examples[i].answer) for i, ids in zip(idx, completions)]
    total_N, parts = rewards_lib.score(samples, weights)
    rewards_PxG = total_N.reshape(g.prompts_per_step, g.group_size)
    adv_N = np.asarray(group_advantages(
        jnp.asarray(rewards_PxG), scale_rewards=g.scale_rewards)).reshape(-1)
    p_ids = [prompts.tokens_NxP[i, :prompts.lengths_N[i]].tolist() for i in idx]
    seqs = data_lib.pack(p_ids, completions, p_len + g.max_new_tokens - 1, run.pad_id)
    batch = tuple(jnp.asarray(a) for a in seqs)
    old = logps_fn(state["params"], *batch[:2]) if g.mu > 1 else None
    ref = logps_fn(ref_params, *batch[:2]) if ref_params is not None else None
    inner = []
    for _ in range(g.mu):
      state, m = update(state, *batch, jnp.asarray(adv_N), old, ref)
      inner.append(m)
    metrics = {k: np.mean([float(m[k]) for m in inner]) for k in inner[0]}
    metrics.update({
        "reward/mean": float(total_N.mean()), "reward/std": float(total_N.std()),
        "frac_reward_zero_std": float(np.mean(rewards_PxG.std(axis=1) == 0)),
        "completion_length": float(np.mean([len(c) for c in completions])),
    })
    metrics.update({f"reward/{k}": float(v.mean()) for k, v in parts.items()})
    return state, metrics

  summary = run.loop(train_step)
  summary.update(train_prompts=len(examples), group_size=g.group_size, beta=g.beta,
                 epsilon=g.epsilon, epsilon_high=g.epsilon_high, loss_agg=g.loss_agg,
                 scale_rewards=g.scale_rewards, mu=g.mu)
  return summary


CURVES = ["reward/mean", "reward/std", "frac_reward_zero_std", "kl", "clip_ratio",
          "completion_length", "entropy", "loss"]
