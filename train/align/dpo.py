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
import random
from typing import Any, Callable, Optional

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
from train import files
from train import step as step_lib
from train.config import ConfigError

LOSS_TYPES = config_lib.DpoSettings.LOSS_TYPES
REJECTED = config_lib.DpoSettings.REJECTED
REF_FILE = "reference_logps.npz"
PAIRS_FILE = "pairs.jsonl"


def sequence_logps_aux(graphdef: nnx.GraphDef, params: nnx.State, inputs_BxT: jax.Array,
                       targets_BxT: jax.Array, mask_BxT: jax.Array, hook=AS_STORED):
  """(sum over completion tokens of log pi(target | prefix) (B,) float32, the router statistics
  of an MoE model or None). hook: the train step's parameter hook (model/param_hook.py)."""
  logits_BxTxV, stats = transformer.apply_with_aux(graphdef, params, inputs_BxT, hook=hook)
  logp_BxT = step_lib.token_logps(logits_BxTxV, targets_BxT)
  return jnp.sum(logp_BxT * mask_BxT, axis=-1), stats


def sequence_logps(graphdef: nnx.GraphDef, params: nnx.State, inputs_BxT: jax.Array,
                   targets_BxT: jax.Array, mask_BxT: jax.Array) -> jax.Array:
  """Sum over completion tokens of log pi(target | prefix): (B,) float32."""
  return sequence_logps_aux(graphdef, params, inputs_BxT, targets_BxT, mask_BxT)[0]


def dpo_loss_sums(policy_chosen_B: jax.Array, policy_rejected_B: jax.Array,
                  ref_chosen_B: jax.Array, ref_rejected_B: jax.Array, *, beta: float,
                  loss_type: str, label_smoothing: float = 0.0,
                  chosen_len_B: Optional[jax.Array] = None,
                  rejected_len_B: Optional[jax.Array] = None,
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(loss summed over the pairs, metrics summed over the pairs) from sequence log-probabilities
  (B,): sums, so that the train step can add them over devices and micro-batches before it
  divides by the number of pairs. chosen_len_B / rejected_len_B (completion token counts) are
  needed by ipo only."""
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
  sums = {
      "rewards/chosen": jnp.sum(chosen_reward_B),
      "rewards/rejected": jnp.sum(rejected_reward_B),
      "rewards/accuracies": jnp.sum((chosen_reward_B > rejected_reward_B).astype(jnp.float32)),
      "rewards/margins": jnp.sum(chosen_reward_B - rejected_reward_B),
      "logps/chosen": jnp.sum(policy_chosen_B),
      "logps/rejected": jnp.sum(policy_rejected_B),
  }
  return jnp.sum(loss_B), sums


def dpo_loss(policy_chosen_B: jax.Array, policy_rejected_B: jax.Array,
             ref_chosen_B: jax.Array, ref_rejected_B: jax.Array,
             **kw) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(mean loss over the pairs, mean metrics): dpo_loss_sums divided by the number of pairs."""
  total, sums = dpo_loss_sums(
      policy_chosen_B, policy_rejected_B, ref_chosen_B, ref_rejected_B, **kw)
  b = policy_chosen_B.shape[0]
  return total / b, {k: v / b for k, v in sums.items()}


def make_pair_logps(graphdef: nnx.GraphDef) -> Callable:
  """jitted (params, chosen Sequences, rejected Sequences) -> (chosen (B,), rejected (B,)).

  One forward over the two halves stacked on the batch axis. Sharded params are fine: XLA
  gathers what the forward needs.
  """

  def pair_logps(params, c_in, c_tg, c_mask, r_in, r_tg, r_mask):
    both = sequence_logps(graphdef, params, jnp.concatenate([c_in, r_in]),
                          jnp.concatenate([c_tg, r_tg]), jnp.concatenate([c_mask, r_mask]))
    return both[:c_in.shape[0]], both[c_in.shape[0]:]

  return jax.jit(pair_logps)


def loss(graphdef: nnx.GraphDef, *, beta: float, loss_type: str, label_smoothing: float = 0.0,
         nll_weight: float = 0.0, aux_weights: tuple[float, float] = (0.0, 0.0)) -> step_lib.LossFn:
  """DPO's LossFn, averaged over pairs (the count is the number of pairs).

  batch (B pairs): {"chosen": {"inputs", "targets", "mask"} (B, T) each, "rejected": likewise,
  "ref_chosen": (B,), "ref_rejected": (B,) the reference's sequence log-probs, and with
  nll_weight > 0 "chosen_tokens": (B,) the whole batch's chosen completion tokens per pair}.

  nll_weight > 0 adds that times the chosen completions' per-token negative log-likelihood (RPO,
  Pang et al. 2024): without it, pairs that differ in one token let DPO lower the chosen
  log-prob together with the rejected one (Pal et al. 2024), which costs greedy accuracy. That
  term is a mean over the batch's tokens, not its pairs: each pair's NLL is divided by the
  batch's chosen tokens per pair (computed on the host over the whole batch), so that summed over
  pairs and divided by their number it is the per-token mean, on any split of the rows.
  """

  def loss_fn(params, batch, hook=AS_STORED):
    c, r = batch["chosen"], batch["rejected"]
    b = c["inputs"].shape[0]
    cat = lambda k: jnp.concatenate([c[k], r[k]])  # noqa: E731  one forward for both halves
    both_2B, stats = sequence_logps_aux(
        graphdef, params, cat("inputs"), cat("targets"), cat("mask"), hook=hook)
    total, sums = dpo_loss_sums(
        both_2B[:b], both_2B[b:], batch["ref_chosen"], batch["ref_rejected"], beta=beta,
        loss_type=loss_type, label_smoothing=label_smoothing,
        chosen_len_B=jnp.sum(c["mask"], -1), rejected_len_B=jnp.sum(r["mask"], -1))
    if nll_weight > 0:
      nll = -jnp.sum(both_2B[:b] / batch["chosen_tokens"])
      sums.update({"loss/dpo": total, "loss/nll_chosen": nll})
      total = total + nll_weight * nll
    n = jnp.asarray(b, jnp.float32)
    aux, moe_sums = step_lib.router_terms(stats, n, aux_weights)
    return total + aux, n, {"loss": total, **sums, **moe_sums}

  return loss_fn


def batch_of(chosen: data_lib.Sequences, rejected: data_lib.Sequences, ref_c: np.ndarray,
             ref_r: np.ndarray, idx: np.ndarray, nll: bool) -> dict[str, Any]:
  """DPO's batch of the pairs idx (see loss); ref_c, ref_r are already those rows'."""
  rows = lambda s: {"inputs": s.inputs_NxT[idx], "targets": s.targets_NxT[idx],  # noqa: E731
                    "mask": s.mask_NxT[idx]}
  batch = {"chosen": rows(chosen), "rejected": rows(rejected),
           "ref_chosen": np.asarray(ref_c, np.float32),
           "ref_rejected": np.asarray(ref_r, np.float32)}
  if nll:
    per_pair = max(float(batch["chosen"]["mask"].sum()), 1.0) / len(idx)
    batch["chosen_tokens"] = np.full(len(idx), per_pair, np.float32)
  return batch


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


def _pair_ids(tok, pairs: list[data_lib.Pair]):
  """((prompt ids, chosen ids), (prompt ids, rejected ids)), completions ending in end-of-text."""
  prompts = [p.prompt for p in pairs]
  return (data_lib.token_ids(tok, prompts, [p.chosen for p in pairs]),
          data_lib.token_ids(tok, prompts, [p.rejected for p in pairs]))


def policy_pairs(policy: stage_lib.Policy, examples: list[data_lib.Prompted], *, tries: int,
                 key: jax.Array, batch_size: int, max_new_tokens: int) -> list[data_lib.Pair]:
  """Pairs whose rejected is a wrong answer the policy itself samples (temperature 1).

  Each prompt gets up to `tries` samples; the first finished wrong one is its rejected. Prompts
  the policy never gets wrong are dropped: there is no mistake there to push down. On-policy
  negatives sit where the policy puts its mass, so the preference gradient moves probability it
  actually has (Tajwar et al. 2024).
  """
  complete = stage_lib.make_completer(
      policy, [e.prompt for e in examples], batch_size=batch_size,
      max_new_tokens=max_new_tokens, temperature=1.0)
  rejected: list = [None] * len(examples)
  for k in range(tries):
    todo = [i for i, r in enumerate(rejected) if r is None]
    if not todo:
      break
    samples = complete(policy.params, jax.random.fold_in(key, k))
    for i in todo:
      s = samples[i]
      if s.finished and s.completion.strip() and s.completion.strip() != examples[i].answer.strip():
        rejected[i] = s.completion
  return [data_lib.Pair(e.prompt, e.answer, r) for e, r in zip(examples, rejected) if r is not None]


def _stored_or_sampled_pairs(run: stage_lib.Run, examples, d, seed: int) -> list[data_lib.Pair]:
  """The policy-sampled pairs of this workdir: sampled once, stored as pairs.jsonl, reread on
  resume (so a resumed run trains on the same pairs)."""
  path = os.path.join(run.workdir, PAIRS_FILE)
  if not os.path.exists(path):
    pairs = policy_pairs(run.policy, examples, tries=d.policy_tries, key=jax.random.key(seed),
                         batch_size=run.stage_settings.eval.batch_size,
                         max_new_tokens=run.stage_settings.eval.max_new_tokens)
    files.write_jsonl_atomic(
        path, ({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs))
  return data_lib.load_pairs(path, run.stage_settings.task, seed)


def _heldout_pairs(stage_settings: config_lib.StageSettings, seed: int) -> list[data_lib.Pair]:
  """Near misses of validation problems, for a run on the built-in task (no data files): whether
  the preference generalises beyond the pairs trained on, which rewards/accuracies on training
  batches cannot tell (logged beside the validation accuracy, eval/*). [] when the data comes
  from files."""
  paths = stage_settings.data
  if paths.train_path or paths.eval_path:
    return []
  rng = random.Random(seed)
  heldout = data_lib.task_examples(stage_settings.task, "validation")
  return [data_lib.Pair(e.prompt, e.answer, data_lib.wrong_answer(e.answer, rng))
          for e in heldout[:stage_settings.eval.max_examples]]


def _packed(tok, pair_lists: list[list[data_lib.Pair]], pad_id: int,
            max_seq_len: int) -> tuple[tuple[data_lib.Sequences, ...], ...]:
  """Each list of pairs as (chosen, rejected) Sequences, all of one length: the longest pair's;
    () for an empty list. ConfigError when that is longer than the model's max_seq_len."""
  ids = [_pair_ids(tok, pairs) if pairs else () for pairs in pair_lists]
  # Each of ids is ((prompt ids, chosen ids), (prompt ids, rejected ids)).
  length = max(data_lib.needed_length(p, c) for pair_ids in ids for p, c in pair_ids)
  if length + 1 > max_seq_len:
    raise ConfigError(f"the longest pair has {length + 1} tokens, more than the model's "
                      f"max_seq_len={max_seq_len}")
  return tuple(tuple(data_lib.pack(*pc, length, pad_id) for pc in pair_ids) for pair_ids in ids)


def _stored_reference(path: str, pair_logps: Callable, ref_params: nnx.State,
                      chosen: data_lib.Sequences, rejected: data_lib.Sequences,
                      batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """The reference's (chosen, rejected) log-probs of every pair: read from path, or computed
  once and written there (a resumed run reads them again). ConfigError when the file holds
  another number of pairs than the data."""
  if os.path.exists(path):
    stored = np.load(path)
    ref_all = (stored["chosen"], stored["rejected"])
  else:
    ref_all = precompute_reference(pair_logps, ref_params, chosen, rejected, batch_size)
    np.savez(path + ".tmp.npz", chosen=ref_all[0], rejected=ref_all[1])
    os.replace(path + ".tmp.npz", path)
  n_pairs = len(chosen.inputs_NxT)
  if len(ref_all[0]) != n_pairs:
    raise ConfigError(f"{path} holds {len(ref_all[0])} pairs but the data has {n_pairs}; "
                      "use a new --workdir")
  return ref_all


def _with_pair_metrics(evaluate_generation: Callable[[nnx.State], dict[str, float]],
                       pair_logps: Callable, ref_params: nnx.State, held: tuple,
                       beta: float, batch_size: int) -> Callable[[nnx.State], dict[str, float]]:
  """evaluate(params): evaluate_generation's metrics plus rewards/accuracies and
  rewards/margins (sigmoid DPO) on the held-out pairs `held` (chosen, rejected Sequences)."""
  held_ref = precompute_reference(pair_logps, ref_params, *held, batch_size)

  def evaluate(params) -> dict[str, float]:
    pc, pr = precompute_reference(pair_logps, params, *held, batch_size)
    _, m = dpo_loss(pc, pr, held_ref[0], held_ref[1], beta=beta, loss_type="sigmoid")
    out = evaluate_generation(params)
    out.update({k: float(m[k]) for k in ("rewards/accuracies", "rewards/margins")})
    return out

  return evaluate


def train(config: ml_collections.ConfigDict, workdir: str, init_workdir: str,
          profile_steps: Optional[tuple[int, int]] = None) -> dict[str, Any]:
  """Runs (or resumes) DPO in `workdir`, starting from (and referenced to) init_workdir."""
  stage_settings = config_lib.resolve_stage(config, "dpo")
  if not init_workdir:
    raise ConfigError("DPO needs --init_workdir: the policy to start from and to stay near")
  d, t, task, paths = (stage_settings.stage, stage_settings.train, stage_settings.task,
                       stage_settings.data)
  if d.rejected == "policy":
    examples = data_lib.load_examples(paths.train_path, task, "train")
  else:
    pairs = data_lib.load_pairs(paths.train_path, task, t.seed)
  run = stage_lib.Run(config, workdir, init_workdir, stage="dpo", stage_settings=stage_settings,
                       total_updates=t.steps, profile_steps=profile_steps)
  if d.rejected == "policy":
    pairs = _stored_or_sampled_pairs(run, examples, d, t.seed)
  if not pairs:
    raise data_lib.DataError("no preference pairs: the policy answered every prompt right")
  (chosen, rejected), held = _packed(run.policy.tok, [pairs, _heldout_pairs(stage_settings, t.seed)],
                                     run.pad_id, run.policy.model_cfg.max_seq_len)
  pair_logps = make_pair_logps(run.policy.graphdef)
  nll = d.nll_weight > 0
  rows = np.arange(t.batch_size) % len(pairs)
  step_fn = run.start(
      loss(run.policy.graphdef, beta=d.beta, loss_type=d.loss_type,
           label_smoothing=d.label_smoothing, nll_weight=d.nll_weight,
           aux_weights=run.aux_weights),
      batch_of(chosen, rejected, np.zeros(len(rows)), np.zeros(len(rows)), rows, nll),
      train_data=f"{len(pairs)} preference pairs")

  # The reference is the starting policy (run.policy.params were read from init_workdir), held
  # in the policy's sharded layout.
  ref_params = run.shard(run.policy.params)
  run.policy.params = None
  ref_all = None
  if d.precompute_ref:
    ref_all = _stored_reference(os.path.join(workdir, REF_FILE), pair_logps, ref_params, chosen,
                                rejected, t.batch_size)
  if held:
    run.evaluate = _with_pair_metrics(run.evaluate, pair_logps, ref_params, held, d.beta,
                                      t.batch_size)
  if d.precompute_ref:
    ref_params = None  # nothing of the reference stays in memory

  def train_step(step: int, state):
    idx = data_lib.batch_indices(len(pairs), t.batch_size, step, t.seed)
    if ref_all is not None:
      ref_c, ref_r = ref_all[0][idx], ref_all[1][idx]
    else:
      ref_c, ref_r = pair_logps(ref_params, *(a[idx] for a in chosen), *(a[idx] for a in rejected))
    state, metrics = step_fn(state, batch_of(chosen, rejected, ref_c, ref_r, idx, nll))
    return state, {k: v for k, v in metrics.items() if k != "tokens"}

  summary = run.loop(train_step)
  summary.update(train_pairs=len(pairs), rejected=d.rejected, loss_type=d.loss_type, beta=d.beta,
                 nll_weight=d.nll_weight,
                 reference="precomputed" if d.precompute_ref else "live")
  return summary


CURVES = ["loss", "rewards/accuracies", "rewards/margins", "eval/rewards/accuracies",
          "eval/rewards/margins", "rewards/chosen", "rewards/rejected",
          "logps/chosen", "logps/rejected"]
