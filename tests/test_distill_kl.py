"""Logit (KL) distillation of a speculative draft (train/kl_distill.py, distill.* settings) and
sampled distillation data (train/studies/distill.py with a SamplingConfig)."""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from model import sampling, transformer
from train import config as config_lib
from train import kl_distill
from train import step as step_lib


def _log_softmax(x: np.ndarray) -> np.ndarray:
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_topk_kl_equals_a_hand_computation():
  """Forward KL(p_T || q_T), p_T renormalised over the k stored tokens at temperature T, q_T over
  the whole vocabulary. Fails on a reversed direction, a temperature left out, or p taken as its
  raw top-k probabilities."""
  rng = np.random.default_rng(0)
  draft_1x2x6 = rng.normal(size=(1, 2, 6)) * 2.0
  target_logp_1x2x6 = _log_softmax(rng.normal(size=(1, 2, 6)) * 2.0)
  ids_1x2x3 = np.argsort(-target_logp_1x2x6, axis=-1)[..., :3]
  logps_1x2x3 = np.take_along_axis(target_logp_1x2x6, ids_1x2x3, -1)
  t = 2.0
  expected = np.zeros((1, 2))
  for pos in range(2):
    w = np.exp(logps_1x2x3[0, pos] / t)
    p = w / w.sum()
    log_q = _log_softmax(draft_1x2x6[0, pos] / t)
    expected[0, pos] = sum(p[i] * (np.log(p[i]) - log_q[ids_1x2x3[0, pos, i]]) for i in range(3))
  got = kl_distill.topk_kl(jnp.asarray(draft_1x2x6, jnp.float32), jnp.asarray(ids_1x2x3),
                           jnp.asarray(logps_1x2x3, jnp.float32), t)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)
  # teacher_topk gives the same support and log-probabilities from the target's logits.
  ids, logps = kl_distill.teacher_topk(jnp.asarray(target_logp_1x2x6 + 3.0, jnp.float32), 3)
  np.testing.assert_array_equal(np.asarray(ids), ids_1x2x3)
  np.testing.assert_allclose(np.asarray(logps), logps_1x2x3, rtol=1e-5)


@pytest.mark.parametrize("k", [0, 3])
def test_kl_gradient_is_zero_when_the_draft_is_the_target(k):
  """At q_T = p_T the KL is at its minimum: zero value and zero gradient (the whole vocabulary,
  k = 0, and a draft whose mass is all on the k stored tokens), and a nonzero gradient when the
  draft differs."""
  rng = np.random.default_rng(1)
  target_1x4x6 = jnp.asarray(rng.normal(size=(1, 4, 6)) * 2.0, jnp.float32)
  ids, logps = kl_distill.teacher_topk(target_1x4x6, k)
  t = 1.5
  kl_sum = lambda z: jnp.sum(kl_distill.topk_kl(z, ids, logps, t))  # noqa: E731
  if k == 0:
    same = target_1x4x6 + 0.7  # a shift changes no distribution
  else:  # the top-k logits where they are, far below everywhere else
    same = jnp.full_like(target_1x4x6, -1e4)
    same = jax.vmap(jax.vmap(lambda row, i, v: row.at[i].set(v)))(same, ids, logps)
  assert float(kl_sum(same)) == pytest.approx(0.0, abs=1e-5)
  np.testing.assert_allclose(np.asarray(jax.grad(kl_sum)(same)), 0.0, atol=1e-6)
  other = jnp.asarray(rng.normal(size=(1, 4, 6)), jnp.float32)
  assert float(jnp.abs(jax.grad(kl_sum)(other)).max()) > 1e-2


def test_distill_settings_reject_bad_values():
  cases = [({"kl_weight": -1.0}, "distill.kl_weight"), ({"temperature": 0.0}, "distill.temperature"),
           ({"top_k": -2}, "distill.top_k"), ({"kl_weight": 1.0}, "distill.target_workdir"),
           ({"lm_weight": 0.0}, "leave nothing to train")]
  for fields, named in cases:
    with pytest.raises(config_lib.ConfigError, match=named):
      config_lib.DistillSettings(**fields)


def _acceptance(p_logits, q_logits) -> float:
  """Mean over positions of sum_x min(p(x), q(x)) at temperature 1: the expected acceptance
  rate of one draft token (model/speculative.py's rule)."""
  p, q = jax.nn.softmax(p_logits, -1), jax.nn.softmax(q_logits, -1)
  return float(jnp.mean(jnp.sum(jnp.minimum(p, q), -1)))


def test_kl_distillation_raises_the_acceptance_rate_and_weighs_kl_by_t_squared(tiny_run):
  """A few steps of the shared train step on kl_lm_loss (KL alone, the tiny trained run as the
  target, its logits through make_teacher) raise the draft's expected acceptance at temperature
  1 on held-out rows. And the objective is lm_weight x CE + kl_weight x T^2 x KL exactly."""
  from model.config import ModelConfig
  from train.saved_run import load_run

  tcfg, tdef, tparams, _ = load_run(tiny_run)
  dcfg = ModelConfig.from_dict({**tcfg.to_dict(), "d_model": 16, "n_layers": 1, "n_heads": 2,
                                "n_kv_heads": 2, "d_ff": 32})
  ddef, dparams = transformer.create(dcfg, jax.random.key(5))
  teacher = jax.jit(kl_distill.make_teacher(tdef, 0))
  rng = np.random.default_rng(0)
  rows = lambda: jnp.asarray(rng.integers(3, tcfg.vocab_size, (8, 17)), jnp.int32)  # noqa: E731
  held_out = rows()
  t_logits = teacher(tparams, held_out)["topk_logps"]  # k = 0: every token's log-probability
  draft_fwd = jax.jit(lambda p, x: transformer.apply(ddef, p, x))  # eager would be slower here
  before = _acceptance(t_logits, draft_fwd(dparams, held_out[:, :-1]))

  loss_fn = kl_distill.kl_lm_loss(ddef, -1, kl_weight=1.0, lm_weight=0.0, temperature=1.0)
  tx = optax.adam(3e-2)
  step = jax.jit(step_lib.make_train_step(loss_fn, tx, grad_accum=1, lr_schedule=lambda s: 3e-2))
  state = step_lib.init_state(dparams, tx, 0)
  for _ in range(6):
    state, metrics = step(state, teacher(tparams, rows()))
  after = _acceptance(t_logits, draft_fwd(state["params"], held_out[:, :-1]))
  # The tiny target is nearly flat (acceptance 0.94 before); the steps close over a third of
  # the gap to 1 (about half, measured).
  assert 1.0 - after < 0.7 * (1.0 - before), (before, after)

  # The weighting: at T = 2, weights 0.5 and 3, total = 0.5 CE + 3 x 4 x KL.
  batch = teacher(tparams, held_out)
  total, n, sums = jax.jit(kl_distill.kl_lm_loss(ddef, -1, kl_weight=3.0, lm_weight=0.5,
                                                 temperature=2.0))(dparams, batch)
  d_logits = draft_fwd(dparams, held_out[:, :-1])
  kl = kl_distill.topk_kl(d_logits, batch["topk_ids"], batch["topk_logps"], 2.0)
  ce = -step_lib.token_logps(d_logits, held_out[:, 1:])
  assert int(n) == held_out[:, 1:].size
  np.testing.assert_allclose(float(sums["distill/kl"]), float(jnp.sum(kl)), rtol=1e-5)
  np.testing.assert_allclose(float(total), 0.5 * float(jnp.sum(ce)) + 12.0 * float(jnp.sum(kl)),
                             rtol=1e-5)


def test_sampled_distill_data_is_seeded_and_differs_from_greedy(tiny_run, tmp_path):
  """Continuations at temperature 1: the same seed gives the same file whatever the batch (each
  continuation's key is the seed's and its index's), and not the greedy file."""
  from train.studies import distill

  args = dict(prompts=3, prompt_tokens=4, new_tokens=12, seed=0)
  hot = sampling.SamplingConfig(temperature=1.0)
  summary = distill.record(tiny_run, str(tmp_path / "s4.jsonl"), batch=4, sampling_cfg=hot,
                           **args)
  distill.record(tiny_run, str(tmp_path / "s2.jsonl"), batch=2, sampling_cfg=hot, **args)
  distill.record(tiny_run, str(tmp_path / "g.jsonl"), batch=4, **args)
  read = lambda name: [json.loads(line)["text"] for line in open(tmp_path / name)]  # noqa: E731
  assert summary["temperature"] == 1.0 and summary["continuations"] == 3
  assert read("s4.jsonl") == read("s2.jsonl")
  assert read("s4.jsonl") != read("g.jsonl")


def test_pretraining_with_kl_distillation(tiny_run, tmp_path):
  """distill.kl_weight > 0 in a pretraining run: the tiny run as the target (its tokenizer
  copied), the KL logged per step; a target with another vocabulary size is one ConfigError."""
  from tests.helpers import tiny_config
  from train import metrics as metrics_lib
  from train import pretrain

  corpus = os.path.join(os.path.dirname(tiny_run), "*.txt")
  workdir, other = str(tmp_path / "draft"), str(tmp_path / "other")
  for d in (workdir, other):
    os.makedirs(d)
    shutil.copy(os.path.join(tiny_run, "tokenizer.json"), d)

  def config(**extra):
    c = tiny_config(corpus, **{"train.steps": 2, "train.eval_every": 2, "model.d_model": 16,
                               "model.n_heads": 2, **extra})
    c.distill = config_lib.section(config_lib.DistillSettings, target_workdir=tiny_run,
                                   kl_weight=1.0, lm_weight=0.5, temperature=1.0, top_k=8)
    return c

  with pytest.raises(config_lib.ConfigError, match="model.vocab_size"):
    pretrain.train(config(**{"model.vocab_size": 512}), other)
  summary = pretrain.train(config(), workdir)
  assert summary["final_step"] == 2
  records = metrics_lib.by_step(workdir)
  kl = [r["distill/kl"] for r in records if "distill/kl" in r]
  assert len(kl) == 2 and all(np.isfinite(kl)) and kl[0] > 0
