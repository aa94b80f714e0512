"""Soft-caps (model.final_logit_softcap, model.attn_logit_softcap): cap * tanh(x / cap) on the
logits and on the attention scores, in reference, flash (forward and backward) and decoding."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import kv_cache, transformer
from model.attention import attention, reference_attention
from model.config import ModelConfig
from model.primitives import softcap
from tests.test_flash import _assert_flash_matches_reference


def test_softcap_by_hand():
  """Catches cap * tanh(x) or tanh(x / cap) (missing one of the two cap factors), or a cap that
  is not the identity at 0: values worked out by hand."""
  x = jnp.array([0.0, 1.0, -30.0, 300.0])
  np.testing.assert_allclose(softcap(x, 30.0), 30.0 * np.tanh(np.array([0.0, 1 / 30, -1.0, 10.0])),
                             rtol=1e-6)
  assert float(softcap(jnp.array(1e-3), 30.0)) == pytest.approx(1e-3, rel=1e-6)  # ~x near 0
  assert float(softcap(jnp.array(1e4), 50.0)) == pytest.approx(50.0)  # bounded by the cap
  np.testing.assert_array_equal(softcap(x, 0.0), x)  # 0 = off


def test_reference_caps_the_scaled_scores_before_the_mask():
  """Catches the cap applied before the scale, after the softmax, or not at all: reference
  against softmax(cap tanh(q k^T scale / cap)) computed in numpy, causal."""
  rng = np.random.default_rng(0)
  q, k, v = (rng.standard_normal((1, 5, 1, 8)).astype(np.float32) * 3 for _ in range(3))
  cap, scale = 0.8, 0.3
  got = reference_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), causal=True,
                            scale=scale, softcap=cap)
  s = cap * np.tanh(q[0, :, 0] @ k[0, :, 0].T * scale / cap)
  s = np.where(np.tril(np.ones((5, 5), bool)), s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  want = (p / p.sum(-1, keepdims=True)) @ v[0, :, 0]
  np.testing.assert_allclose(got[0, :, 0], want, rtol=1e-5, atol=1e-6)
  uncapped = reference_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), causal=True,
                                 scale=scale)
  assert float(jnp.abs(uncapped - got).max()) > 1e-2  # the cap changes this case


@pytest.mark.parametrize("causal, t, block_q, block_k", [(True, 37, 16, 8), (False, 20, 8, 16)])
def test_flash_with_softcap_and_scale_matches_reference_forward_and_gradient(causal, t, block_q,
                                                                             block_k):
  """Catches the flash backward pass missing the cap's derivative 1 - (capped / cap)^2 (or using
  the uncapped score), or ignoring a non-default scale: out, dq, dk, dv against reference with
  a cap small enough to bend the scores (GQA, lengths not block multiples)."""
  _assert_flash_matches_reference(2, t, t, 2, 2, 16, jnp.float32, causal=causal, block_q=block_q,
                                  block_k=block_k, masks=dict(softcap=1.5, scale=0.4))


def test_kernels_refuse_a_softcap_and_the_config_says_so_first():
  """Catches a soft-cap silently dropped by an implementation that has none."""
  with pytest.raises(ValueError, match="model.attn_logit_softcap"):
    ModelConfig(attention_impl="cudnn", attn_logit_softcap=50.0)
  with pytest.raises(ValueError, match="model.final_logit_softcap must be >= 0"):
    ModelConfig(final_logit_softcap=-1.0)
  q = jnp.ones((1, 4, 2, 8))
  # auto never picks a kernel when a cap is set: on every backend it runs flash, exactly.
  np.testing.assert_array_equal(
      attention(q, q[:, :, :1], q[:, :, :1], implementation="auto", softcap=2.0),
      attention(q, q[:, :, :1], q[:, :, :1], implementation="flash", softcap=2.0))


CFG = ModelConfig(vocab_size=16, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32,
                  max_seq_len=8, dtype="float32", init_std=0.5)
CAPPED = dataclasses.replace(CFG, final_logit_softcap=2.0, attn_logit_softcap=1.0)
TOKENS = jnp.array([[1, 5, 2, 9, 3, 3, 7, 0]])


def test_model_caps_logits_and_decoding_caps_scores_as_training_does():
  """Catches the logit cap missing (logits beyond +-cap) or applied twice, and the decode path
  (model/kv_cache.attend) not capping the scores that training capped: a prefill's logits must
  equal the forward pass's."""
  params = jax.jit(lambda key: transformer.create(CFG, key)[1])(jax.random.key(0))
  graphdef = transformer.abstract(CAPPED)[0]
  only_attn = dataclasses.replace(CAPPED, final_logit_softcap=0.0)

  @jax.jit
  def run(params):
    capped = transformer.apply(graphdef, params, TOKENS)
    logits_attn_capped = transformer.apply(transformer.abstract(only_attn)[0], params, TOKENS)
    plain = transformer.apply(transformer.abstract(CFG)[0], params, TOKENS)
    cache = kv_cache.init(CAPPED, 1, 8)
    prefill, _ = transformer.decode(graphdef, params, TOKENS, jnp.arange(8)[None], cache)
    return capped, logits_attn_capped, plain, prefill

  capped, attn_capped, plain, prefill = run(params)
  np.testing.assert_allclose(capped, 2.0 * np.tanh(np.asarray(attn_capped) / 2.0), rtol=1e-5,
                             atol=1e-6)
  assert float(jnp.abs(capped).max()) < 2.0 < float(jnp.abs(plain).max())
  assert float(jnp.abs(attn_capped - plain).max()) > 1e-3  # the score cap changes the logits
  np.testing.assert_allclose(prefill, capped, rtol=1e-5, atol=1e-5)
