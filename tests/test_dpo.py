"""DPO: every loss type against an independent computation, log 2 at pi = ref, the direction of the
gradient, and precomputed reference log-probs against a live reference."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from model import transformer
from model.config import ModelConfig
from train.align import data as data_lib
from train.align import dpo
from train import step as step_lib

CFG = ModelConfig(vocab_size=16, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32,
                  max_seq_len=16)
PAD = 15

# Fixed sequence log-probs of three pairs: policy chosen/rejected, reference chosen/rejected.
PC = np.array([-3.0, -5.5, -2.0])
PR = np.array([-4.0, -5.0, -9.0])
RC = np.array([-3.5, -5.0, -2.5])
RR = np.array([-3.0, -6.0, -8.0])
LEN_C = np.array([2.0, 3.0, 1.0])
LEN_R = np.array([2.0, 4.0, 3.0])


def _log_sigmoid(x):
  return -math.log1p(math.exp(-x))


def _expected(loss_type, beta, eps=0.0):
  """The losses written out pair by pair in plain Python, from the papers' formulas."""
  out = []
  for pc, pr, rc, rr, lc, lr in zip(PC, PR, RC, RR, LEN_C, LEN_R):
    h = (pc - rc) - (pr - rr)
    if loss_type == "sigmoid":
      out.append(-_log_sigmoid(beta * h))
    elif loss_type == "ipo":
      out.append(((pc - rc) / lc - (pr - rr) / lr - 1 / (2 * beta)) ** 2)
    elif loss_type == "hinge":
      out.append(max(0.0, 1 - beta * h))
    else:
      out.append((-(1 - eps) * _log_sigmoid(beta * h) + eps * _log_sigmoid(-beta * h)) / (1 - 2 * eps))
  return sum(out) / len(out)


@pytest.mark.parametrize("loss_type,beta,eps", [
    ("sigmoid", 0.1, 0.0), ("sigmoid", 2.0, 0.0), ("ipo", 0.1, 0.0), ("ipo", 0.5, 0.0),
    ("hinge", 0.1, 0.0), ("hinge", 1.0, 0.0), ("robust", 0.1, 0.1), ("robust", 1.0, 0.3)])
def test_loss_equals_independent_computation(loss_type, beta, eps):
  loss, _ = dpo.dpo_loss(jnp.asarray(PC), jnp.asarray(PR), jnp.asarray(RC), jnp.asarray(RR),
                         beta=beta, loss_type=loss_type, label_smoothing=eps,
                         chosen_len_B=jnp.asarray(LEN_C), rejected_len_B=jnp.asarray(LEN_R))
  assert float(loss) == pytest.approx(_expected(loss_type, beta, eps), rel=1e-5)


def test_metrics_are_the_implicit_rewards():
  _, m = dpo.dpo_loss(jnp.asarray(PC), jnp.asarray(PR), jnp.asarray(RC), jnp.asarray(RR),
                      beta=0.1, loss_type="sigmoid")
  chosen, rejected = 0.1 * (PC - RC), 0.1 * (PR - RR)
  assert float(m["rewards/chosen"]) == pytest.approx(chosen.mean(), rel=1e-5)
  assert float(m["rewards/rejected"]) == pytest.approx(rejected.mean(), rel=1e-5)
  assert float(m["rewards/margins"]) == pytest.approx((chosen - rejected).mean(), rel=1e-5)
  assert float(m["rewards/accuracies"]) == pytest.approx(np.mean(chosen > rejected))
  assert float(m["logps/chosen"]) == pytest.approx(PC.mean())
  assert float(m["logps/rejected"]) == pytest.approx(PR.mean())


def _pairs():
  """Three prompts with chosen/rejected completions of different lengths, as token ids."""
  prompts = [[1, 2, 3], [4, 5], [6]]
  chosen = [[7, 8, 0], [9, 0], [10, 11, 12, 0]]
  rejected = [[8, 0], [9, 9, 0], [13, 0]]
  length = max(data_lib.needed_length(prompts, chosen), data_lib.needed_length(prompts, rejected))
  return data_lib.pack(prompts, chosen, length, PAD), data_lib.pack(prompts, rejected, length, PAD)


def test_sigmoid_loss_is_log_2_when_policy_equals_reference():
  graphdef, params = transformer.create(CFG, jax.random.key(0))
  chosen, rejected = _pairs()
  pc, pr = dpo.make_pair_logps(graphdef)(params, *chosen, *rejected)
  loss, m = dpo.dpo_loss(pc, pr, pc, pr, beta=0.1, loss_type="sigmoid")
  assert float(loss) == pytest.approx(math.log(2), abs=1e-7)
  assert float(m["rewards/margins"]) == 0.0


def test_gradient_raises_chosen_and_lowers_rejected_logp():
  graphdef, params = transformer.create(CFG, jax.random.key(1))
  chosen, rejected = _pairs()
  pair_logps = dpo.make_pair_logps(graphdef)
  ref_c, ref_r = pair_logps(params, *chosen, *rejected)
  tx = optax.sgd(0.1)
  step = jax.jit(step_lib.make_train_step(
      dpo.loss(graphdef, beta=0.1, loss_type="sigmoid"), tx, grad_accum=1,
      lr_schedule=lambda s: 0.1))
  state = step_lib.init_state(params, tx, 0)
  rows = np.arange(3)
  state, _ = step(state, dpo.batch_of(chosen, rejected, ref_c, ref_r, rows, nll=False))
  new_c, new_r = pair_logps(state["params"], *chosen, *rejected)
  assert np.all(np.asarray(new_c) > np.asarray(ref_c))
  assert np.all(np.asarray(new_r) < np.asarray(ref_r))


def test_precomputed_reference_gives_the_same_loss_as_live():
  graphdef, ref_params = transformer.create(CFG, jax.random.key(2))
  _, policy_params = transformer.create(CFG, jax.random.key(3))
  chosen, rejected = _pairs()
  pair_logps = dpo.make_pair_logps(graphdef)
  # Precomputed in batches of 2 (the last one padded), as training does before its first step.
  stored_c, stored_r = dpo.precompute_reference(pair_logps, ref_params, chosen, rejected, 2)
  idx = np.array([2, 0])  # a training batch
  c = tuple(a[idx] for a in chosen)
  r = tuple(a[idx] for a in rejected)
  live_c, live_r = pair_logps(ref_params, *c, *r)
  pc, pr = pair_logps(policy_params, *c, *r)
  live, _ = dpo.dpo_loss(pc, pr, live_c, live_r, beta=0.1, loss_type="sigmoid")
  stored, _ = dpo.dpo_loss(pc, pr, jnp.asarray(stored_c[idx]), jnp.asarray(stored_r[idx]),
                           beta=0.1, loss_type="sigmoid")
  assert float(stored) == pytest.approx(float(live), abs=1e-6)


def test_sequence_logp_ignores_prompt_and_padding_tokens():
  graphdef, params = transformer.create(CFG, jax.random.key(4))
  seqs = data_lib.pack([[1, 2, 3]], [[7, 0]], 8, PAD)
  logits = transformer.apply(graphdef, params, jnp.asarray(seqs.inputs_NxT))
  logp = jax.nn.log_softmax(logits, -1)[0]
  # completion tokens 7 and end-of-text 0 are predicted at positions 2 and 3
  expected = float(logp[2, 7] + logp[3, 0])
  got = dpo.sequence_logps(graphdef, params, *map(jnp.asarray, seqs))
  assert float(got[0]) == pytest.approx(expected, abs=1e-5)
