"""Group Relative Policy Optimisation (Shao et al. 2024), with the Dr. GRPO and DAPO variants.

One step: P prompts, G completions each from the KV-cache sampler, rewards from the weighted reward
functions (train/align/rewards.py), advantages normalised within each group of G,
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
from flax import nnx

from model import generation, sampling, transformer
from model.param_hook import AS_STORED
from train.align import stage as stage_lib
from train.align import data as data_lib
from train.align import rewards as rewards_lib
from train import config as config_lib
from train import step as step_lib
from train.config import ConfigError

SCALE_REWARDS = config_lib.GrpoSettings.SCALE_REWARDS
LOSS_AGGS = config_lib.GrpoSettings.LOSS_AGGS


def group_advantages(rewards_PxG: jax.Array, *, scale_rewards: str, eps: float = 1e-4) -> jax.Array:
  """Advantages (P, G): rewards centred within each group, divided by its std for 'group'.

  The std is the population one (ddof 0): with G = 2 and rewards (0, 1) the advantages are
  +-1 / (1 + 2 eps), not +-0.71.
  """
  centred_PxG = rewards_PxG - jnp.mean(rewards_PxG, axis=1, keepdims=True)
  if scale_rewards == "none":
    return centred_PxG
  return centred_PxG / (jnp.std(rewards_PxG, axis=1, keepdims=True) + eps)


def logps_and_entropy(graphdef: nnx.GraphDef, params: nnx.State, inputs_NxT: jax.Array,
                      targets_NxT: jax.Array, temperature: float = 1.0, hook=AS_STORED):
  """(log pi(target), entropy of pi) per position, (N, T) each, pi = softmax(logits / temperature),
  and the router statistics of an MoE model (None for a dense one).

  The temperature is the sampler's: the ratio and the KL are then of the distribution the
  completions were really drawn from. use: the train step's parameter hook.
  """
  logits_NxTxV, stats = transformer.apply_with_aux(graphdef, params, inputs_NxT, hook=hook)
  logp_NxT = step_lib.token_logps(logits_NxTxV, targets_NxT, temperature)
  # The entropy (a metric only) is the one use that needs the whole distribution.
  all_logp_NxTxV = jax.nn.log_softmax(logits_NxTxV.astype(jnp.float32) / temperature, axis=-1)
  entropy_NxT = -jnp.sum(jnp.exp(all_logp_NxTxV) * all_logp_NxTxV, axis=-1)
  return logp_NxT, entropy_NxT, stats


def k3_kl(logp_NxT: jax.Array, ref_logp_NxT: jax.Array) -> jax.Array:
  """k3 estimator of KL(pi || ref) per token: ref/pi - log(ref/pi) - 1 >= 0, 0 where pi = ref."""
  log_ratio = ref_logp_NxT - logp_NxT
  return jnp.exp(log_ratio) - log_ratio - 1.0


def grpo_loss_sums(logp_NxT: jax.Array, old_logp_NxT: Optional[jax.Array],
                   ref_logp_NxT: Optional[jax.Array], advantages_N: jax.Array, mask_NxT: jax.Array,
                   *, epsilon: float, epsilon_high: float, beta: float, loss_agg: str,
                   max_new_tokens: int, mean_len_N: Optional[jax.Array] = None,
                   ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """(objective sum, completion token count, metric sums) of one update, additive over rows.

  Divided by the count (summed over every row of the batch) the objective is loss_agg's loss and
  the metrics are token means. grpo and dr_grpo are not token means: their rows are weighted by
  mean_len_N, the whole batch's completion tokens per sequence repeated per row (computed on the
  host before the batch is split; None: from mask_NxT, which is then the whole batch).
  old_logp None = on-policy (pi_old = stop_gradient(pi)).
  """
  if old_logp_NxT is None:
    old_logp_NxT = jax.lax.stop_gradient(logp_NxT)
  if mean_len_N is None:
    mean_len_N = jnp.full(mask_NxT.shape[:1], jnp.sum(mask_NxT) / mask_NxT.shape[0])
  ratio_NxT = jnp.exp(logp_NxT - old_logp_NxT)
  adv_Nx1 = advantages_N[:, None]
  unclipped_NxT = ratio_NxT * adv_Nx1
  clipped_NxT = jnp.clip(ratio_NxT, 1.0 - epsilon, 1.0 + epsilon_high) * adv_Nx1
  per_token_NxT = -jnp.minimum(unclipped_NxT, clipped_NxT)
  sums = {}
  if beta > 0:
    kl_NxT = k3_kl(logp_NxT, ref_logp_NxT)
    per_token_NxT = per_token_NxT + beta * kl_NxT
    sums["kl"] = jnp.sum(kl_NxT * mask_NxT)
  seq_sum_N = jnp.sum(per_token_NxT * mask_NxT, -1)
  if loss_agg == "grpo":  # mean over sequences of each one's token mean
    total = jnp.sum(seq_sum_N / jnp.maximum(jnp.sum(mask_NxT, -1), 1.0) * mean_len_N)
  elif loss_agg == "dr_grpo":  # sum over tokens / (sequences * max_new_tokens)
    total = jnp.sum(seq_sum_N * mean_len_N) / max_new_tokens
  elif loss_agg == "dapo":  # token mean
    total = jnp.sum(seq_sum_N)
  else:
    raise ValueError(f"grpo.loss_agg={loss_agg!r} is unknown; allowed: {', '.join(LOSS_AGGS)}")
  # A token is clipped when the clip removed its gradient: rho left the trust region on the side
  # the advantage pushes it to.
  clipped = ((ratio_NxT < 1.0 - epsilon) & (adv_Nx1 < 0)) | ((ratio_NxT > 1.0 + epsilon_high) & (adv_Nx1 > 0))
  sums["clip_ratio"] = jnp.sum(clipped * mask_NxT)
  sums["ratio_mean"] = jnp.sum(ratio_NxT * mask_NxT)
  return total, jnp.sum(mask_NxT), sums


def loss(graphdef: nnx.GraphDef, g: config_lib.GrpoSettings,
         aux_weights: tuple[float, float] = (0.0, 0.0)) -> step_lib.LossFn:
  """GRPO's LossFn (g: the grpo section's settings, or anything with its fields), plus the
  router losses of an MoE policy.

  batch (N sampled sequences): {"inputs", "targets", "mask"} (N, T), "advantages" (N,),
  "mean_len" (N,) (see grpo_loss_sums), and where used "old_logp" (mu > 1) and "ref_logp"
  (beta > 0), (N, T) each.
  """

  def loss_fn(params, batch, hook=AS_STORED):
    mask_NxT = batch["mask"]
    logp_NxT, entropy_NxT, stats = logps_and_entropy(
        graphdef, params, batch["inputs"], batch["targets"], g.temperature, hook=hook)
    total, n, sums = grpo_loss_sums(
        logp_NxT, batch.get("old_logp"), batch.get("ref_logp"), batch["advantages"], mask_NxT,
        epsilon=g.epsilon, epsilon_high=g.epsilon_high, beta=g.beta, loss_agg=g.loss_agg,
        max_new_tokens=g.max_new_tokens, mean_len_N=batch["mean_len"])
    sums["entropy"] = jnp.sum(entropy_NxT * mask_NxT)
    aux, moe_sums = step_lib.router_terms(stats, n, aux_weights)
    return total + aux, n, {"loss": total, **sums, **moe_sums}

  return loss_fn


def batch_of(seqs: data_lib.Sequences, adv_N: np.ndarray, old_logp_NxT=None,
             ref_logp_NxT=None) -> dict[str, Any]:
  """GRPO's batch (see loss) from one step's sampled sequences."""
  mask = seqs.mask_NxT
  batch = {"inputs": seqs.inputs_NxT, "targets": seqs.targets_NxT, "mask": mask,
           "advantages": np.asarray(adv_N, np.float32),
           "mean_len": np.full(len(mask), mask.sum() / len(mask), np.float32)}
  if old_logp_NxT is not None:
    batch["old_logp"] = np.asarray(old_logp_NxT, np.float32)
  if ref_logp_NxT is not None:
    batch["ref_logp"] = np.asarray(ref_logp_NxT, np.float32)
  return batch


def reward_weights(g: config_lib.GrpoSettings) -> dict[str, float]:
  """grpo.rewards as {reward function: weight}; ConfigError naming the setting otherwise."""
  try:
    return rewards_lib.parse_weights(g.rewards)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _encoded_prompts(policy: stage_lib.Policy, examples: list[data_lib.Prompted],
                     max_new_tokens: int) -> data_lib.Prompts:
  """The examples' prompts, right-padded to the longest; ConfigError when it and
  grpo.max_new_tokens exceed the model's max_seq_len."""
  p_len = data_lib.prompt_length(policy.tok, [e.prompt for e in examples])
  if p_len + max_new_tokens > policy.model_cfg.max_seq_len:
    raise ConfigError(f"prompts of {p_len} tokens plus grpo.max_new_tokens={max_new_tokens} "
                      f"exceed the model's max_seq_len={policy.model_cfg.max_seq_len}")
  return data_lib.encode_prompts(policy.tok, [e.prompt for e in examples], p_len)


def _updates(update: Callable, state: dict, batch: Any, mu: int) -> tuple[dict, dict]:
  """mu optimizer steps on one batch of rollouts: (state, each metric's mean over them)."""
  inner = []
  for _ in range(mu):
    state, m = update(state, batch)
    inner.append(m)
  return state, {k: np.mean([float(m[k]) for m in inner]) for k in inner[0] if k != "tokens"}


def _rollout_metrics(total_N: np.ndarray, rewards_PxG: np.ndarray,
                     parts: dict[str, np.ndarray], completions: list) -> dict[str, float]:
  """One step's rollouts: the reward's mean and spread, the share of groups whose rewards are
  all equal (no advantage, no gradient), completion length, and each reward's mean."""
  metrics = {
      "reward/mean": float(total_N.mean()), "reward/std": float(total_N.std()),
      "frac_reward_zero_std": float(np.mean(rewards_PxG.std(axis=1) == 0)),
      "completion_length": float(np.mean([len(c) for c in completions])),
  }
  metrics.update({f"reward/{k}": float(v.mean()) for k, v in parts.items()})
  return metrics


def train(config: ml_collections.ConfigDict, workdir: str, init_workdir: str,
          profile_steps: Optional[tuple[int, int]] = None) -> dict[str, Any]:
  """Runs (or resumes) GRPO in `workdir`, starting from (and referenced to) init_workdir."""
  stage_settings = config_lib.resolve_stage(config, "grpo")
  g, t = stage_settings.stage, stage_settings.train
  weights = reward_weights(g)
  if not init_workdir:
    raise ConfigError("GRPO needs --init_workdir: a policy that already solves some prompts")
  examples = data_lib.load_examples(stage_settings.data.train_path, stage_settings.task, "train")
  run = stage_lib.Run(config, workdir, init_workdir, stage="grpo", stage_settings=stage_settings,
                       total_updates=t.steps * g.mu,
                       batch_rows=g.prompts_per_step * g.group_size, profile_steps=profile_steps)
  policy = run.policy
  prompts = _encoded_prompts(policy, examples, g.max_new_tokens)
  p_len = prompts.tokens_NxP.shape[1]
  spec = generation.DecodeSpec(g.max_new_tokens, run.eot_id,
                           sampling.SamplingConfig(temperature=g.temperature))
  generate = generation.make_generate(policy.model_cfg, policy.graphdef, spec)
  logps_fn = jax.jit(
      lambda p, i, tg: logps_and_entropy(policy.graphdef, p, i, tg, g.temperature)[0])
  n_rows = g.prompts_per_step * g.group_size
  t_len = p_len + g.max_new_tokens - 1
  tokens = np.zeros((n_rows, t_len), np.int32)
  logps = np.zeros((n_rows, t_len), np.float32)
  example = batch_of(data_lib.Sequences(tokens, tokens, logps), np.zeros(n_rows),
                     logps if g.mu > 1 else None, logps if g.beta > 0 else None)
  update = run.start(loss(policy.graphdef, g, run.aux_weights), example,
                     train_data=f"{len(examples)} prompts, {g.group_size} completions each")
  # The frozen starting policy, in the policy's sharded layout.
  ref_params = run.shard(policy.params) if g.beta > 0 else None
  policy.params = None

  def train_step(step: int, state):
    idx = np.repeat(data_lib.batch_indices(len(examples), g.prompts_per_step, step, t.seed),
                    g.group_size)
    key, sample_key = jax.random.split(jax.random.wrap_key_data(state["rng"]))
    state = dict(state, rng=jax.random.key_data(key))
    out = generate(state["params"], jnp.asarray(prompts.tokens_NxP[idx]),
                   jnp.asarray(prompts.lengths_N[idx]), jax.random.split(sample_key, n_rows))
    completions = generation.trim(out)
    samples = [rewards_lib.sample_of(policy.tok, examples[i].prompt, ids, run.eot_id,
                                     examples[i].answer) for i, ids in zip(idx, completions)]
    total_N, parts = rewards_lib.score(samples, weights)
    rewards_PxG = total_N.reshape(g.prompts_per_step, g.group_size)
    adv_N = np.asarray(group_advantages(
        jnp.asarray(rewards_PxG), scale_rewards=g.scale_rewards)).reshape(-1)
    p_ids = [prompts.tokens_NxP[i, :prompts.lengths_N[i]].tolist() for i in idx]
    seqs = data_lib.pack(p_ids, completions, t_len, run.pad_id)
    old = logps_fn(state["params"], seqs.inputs_NxT, seqs.targets_NxT) if g.mu > 1 else None
    ref = logps_fn(ref_params, seqs.inputs_NxT, seqs.targets_NxT) if g.beta > 0 else None
    batch = batch_of(seqs, adv_N, old, ref)
    state, metrics = _updates(update, state, batch, g.mu)
    return state, {**metrics, **_rollout_metrics(total_N, rewards_PxG, parts, completions)}

  summary = run.loop(train_step)
  summary.update(train_prompts=len(examples), group_size=g.group_size, beta=g.beta,
                 epsilon=g.epsilon, epsilon_high=g.epsilon_high, loss_agg=g.loss_agg,
                 scale_rewards=g.scale_rewards, mu=g.mu)
  return summary


CURVES = ["reward/mean", "reward/std", "frac_reward_zero_std", "kl", "clip_ratio",
          "completion_length", "entropy", "loss"]
