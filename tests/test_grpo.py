"""GRPO: group advantages, the ratio and clip at mu = 1, the k3 KL, completion masking, and no
policy gradient from groups whose rewards are all equal."""

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import optax
import pytest

from model import transformer
from model.config import ModelConfig
from train.align import data as data_lib
from train.align import grpo
from train import step as step_lib

CFG = ModelConfig(vocab_size=16, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32,
                  max_seq_len=16)
PAD, EOT = 15, 0
LOSS_KW = dict(epsilon=0.2, epsilon_high=0.28, beta=0.0, loss_agg="dapo", max_new_tokens=4)


def grpo_loss(logp_NxT, old_logp_NxT, ref_logp_NxT, advantages_N, mask_NxT, **kw):
  """(loss, metrics) of one update on a whole batch: grpo.grpo_loss_sums divided by its count."""
  total, n, sums = grpo.grpo_loss_sums(
      logp_NxT, old_logp_NxT, ref_logp_NxT, advantages_N, mask_NxT, **kw)
  n = jnp.maximum(n, 1.0)
  return total / n, {k: v / n for k, v in sums.items()}


@pytest.mark.parametrize("scale_rewards", ["group", "none"])
def test_advantages_sum_to_zero_within_each_group(scale_rewards):
  rewards_PxG = jax.random.uniform(jax.random.key(0), (5, 4))
  adv_PxG = grpo.group_advantages(rewards_PxG, scale_rewards=scale_rewards)
  np.testing.assert_allclose(np.asarray(adv_PxG).sum(axis=1), 0.0, atol=1e-5)


def test_group_scaling_divides_by_the_group_std():
  adv = grpo.group_advantages(jnp.array([[0.0, 1.0, 1.0, 0.0]]), scale_rewards="group", eps=0.0)
  np.testing.assert_allclose(np.asarray(adv), [[-1.0, 1.0, 1.0, -1.0]])
  adv = grpo.group_advantages(jnp.array([[0.0, 1.0, 1.0, 0.0]]), scale_rewards="none")
  np.testing.assert_allclose(np.asarray(adv), [[-0.5, 0.5, 0.5, -0.5]])


def test_k3_kl_is_nonnegative_and_zero_when_policy_equals_reference():
  logp = jax.random.normal(jax.random.key(1), (4, 6)) - 2.0
  ref = jax.random.normal(jax.random.key(2), (4, 6)) - 2.0
  assert float(jnp.min(grpo.k3_kl(logp, ref))) >= 0.0
  np.testing.assert_array_equal(np.asarray(grpo.k3_kl(logp, logp)), 0.0)


def _rollout():
  """Two prompts of different lengths, two completions each (one cut off without end-of-text)."""
  prompts = [[1, 2, 3], [1, 2, 3], [4, 5], [4, 5]]
  completions = [[6, 7, EOT], [8, EOT], [9, 9, 9, 9], [10, EOT]]
  return data_lib.pack(prompts, completions, 3 + 4 - 1, PAD)


def test_completion_mask_covers_exactly_the_generated_tokens():
  seqs = _rollout()
  np.testing.assert_array_equal(seqs.mask_NxT.sum(-1), [3, 2, 4, 2])
  for row, (p_len, c_len) in enumerate([(3, 3), (3, 2), (2, 4), (2, 2)]):
    masked_targets = seqs.targets_NxT[row][seqs.mask_NxT[row] == 1]
    full = seqs.inputs_NxT[row, :p_len + c_len - 1].tolist() + [seqs.targets_NxT[row, p_len + c_len - 2]]
    assert masked_targets.tolist() == full[p_len:]  # the completion, nothing of prompt or pad


def test_prompt_and_padding_logps_do_not_change_the_loss():
  seqs = _rollout()
  mask = jnp.asarray(seqs.mask_NxT)
  logp = jax.random.normal(jax.random.key(3), mask.shape) - 1.0
  ref = jax.random.normal(jax.random.key(4), mask.shape) - 1.0
  adv = jnp.array([1.0, -1.0, 0.5, -0.5])
  kw = dict(LOSS_KW, beta=0.04)
  noise = 5.0 * (1.0 - mask)  # moves only prompt and padding positions
  for agg in grpo.LOSS_AGGS:
    a, _ = grpo_loss(logp, logp - 0.1, ref, adv, mask, **dict(kw, loss_agg=agg))
    b, _ = grpo_loss(logp + noise, logp - 0.1 - noise, ref + noise, adv, mask,
                          **dict(kw, loss_agg=agg))
    assert float(a) == pytest.approx(float(b), abs=1e-6)


def test_ratio_is_one_and_nothing_clipped_with_mu_1():
  graphdef, params = transformer.create(CFG, jax.random.key(5))
  seqs = _rollout()
  g = ml_collections.ConfigDict(dict(LOSS_KW, temperature=1.0))
  tx = optax.adam(1e-2)
  update = jax.jit(step_lib.make_train_step(grpo.loss(graphdef, g), tx, grad_accum=1,
                                            lr_schedule=lambda s: 1e-2))
  state = step_lib.init_state(params, tx, 0)
  adv = np.array([3.0, -3.0, 3.0, -3.0])  # large: any ratio away from 1 would clip
  _, m = update(state, grpo.batch_of(seqs, adv))
  assert float(m["ratio_mean"]) == 1.0
  assert float(m["clip_ratio"]) == 0.0


def test_clip_counts_tokens_whose_gradient_the_clip_removed():
  mask = jnp.ones((2, 1))
  logp = jnp.log(jnp.array([[1.5], [0.5]]))  # ratios 1.5 and 0.5 against old logp 0
  _, m = grpo_loss(logp, jnp.zeros((2, 1)), None, jnp.array([1.0, -1.0]), mask, **LOSS_KW)
  assert float(m["clip_ratio"]) == 1.0
  _, m = grpo_loss(logp, jnp.zeros((2, 1)), None, jnp.array([-1.0, 1.0]), mask, **LOSS_KW)
  assert float(m["clip_ratio"]) == 0.0  # moving back toward the trust region is never clipped


def test_groups_with_equal_rewards_give_no_policy_gradient():
  rewards_PxG = jnp.array([[1.0, 1.0], [0.0, 1.0]])  # group 0 all equal
  adv_N = grpo.group_advantages(rewards_PxG, scale_rewards="group").reshape(-1)
  mask = jnp.asarray(_rollout().mask_NxT)
  logp = jax.random.normal(jax.random.key(6), mask.shape) - 1.0
  for agg in grpo.LOSS_AGGS:
    grad = jax.grad(lambda lp: grpo_loss(
        lp, None, None, adv_N, mask, **dict(LOSS_KW, loss_agg=agg))[0])(logp)
    np.testing.assert_array_equal(np.asarray(grad[:2]), 0.0)
    assert float(jnp.abs(grad[2:]).sum()) > 0


def test_loss_aggregations():
  mask = jnp.array([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
  logp = jnp.zeros((2, 4))
  adv = jnp.array([1.0, 2.0])  # at ratio 1 the token terms are -A
  loss = lambda agg: float(grpo_loss(logp, None, None, adv, mask, **dict(LOSS_KW, loss_agg=agg))[0])
  assert loss("grpo") == pytest.approx(-(1.0 + 2.0) / 2)  # mean of per-sequence means
  assert loss("dapo") == pytest.approx(-(4 * 1.0 + 2.0) / 5)  # mean over the 5 tokens
  assert loss("dr_grpo") == pytest.approx(-(4 * 1.0 + 2.0) / (2 * 4))  # over 2 x max_new_tokens


@pytest.mark.parametrize("ratio, adv, loss, grad", [
    (1.5, 1.0, -1.28, 0.0),  # above 1 + epsilon_high, pushed up: clipped, no gradient
    (1.5, -1.0, 1.5, 1.5),  # above, pushed down: the unclipped term, gradient -A rho
    (0.5, 1.0, -0.5, -0.5),  # below 1 - epsilon, pushed up: unclipped
    (0.5, -1.0, 0.8, 0.0),  # below, pushed down: clipped at 1 - epsilon = 0.8
])
def test_clipped_surrogate_loss_and_gradient_match_hand_computation(ratio, adv, loss, grad):
  """-min(rho A, clip(rho, 1 - 0.2, 1 + 0.28) A) and its gradient in log pi, one token.

  Catches: max in place of min (the pessimistic bound becomes an optimistic one), the two clip
  bounds swapped (1 - epsilon_high, 1 + epsilon), a clip that never removes the gradient."""
  fn = lambda lp: grpo_loss(lp, jnp.zeros((1, 1)), None, jnp.array([adv]), jnp.ones((1, 1)),
                                 **LOSS_KW)[0]
  value, g = jax.value_and_grad(fn)(jnp.log(jnp.array([[ratio]])))
  assert float(value) == pytest.approx(loss, abs=1e-6)
  assert float(g[0, 0]) == pytest.approx(grad, abs=1e-6)


def test_k3_kl_matches_hand_computation():
  """pi = 0.5, ref = 0.25: ref/pi - log(ref/pi) - 1 = 0.5 + log 2 - 1.

  Catches: the estimator's direction reversed (pi/ref - log(pi/ref) - 1 = 2 - log 2 - 1), which
  keeps it non-negative and zero at pi = ref, all the other test checks."""
  kl = grpo.k3_kl(jnp.log(jnp.array([[0.5]])), jnp.log(jnp.array([[0.25]])))
  assert float(kl[0, 0]) == pytest.approx(0.5 + np.log(2.0) - 1.0, rel=1e-6)
