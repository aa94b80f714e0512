"""Sampling: the warped distributions are what they claim, and tokens follow them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import sampling
from model.sampling import SamplingConfig

LOGITS_1xV = jnp.log(jnp.array([[0.4, 0.3, 0.15, 0.1, 0.05]]))


def test_greedy_distribution_is_one_hot_on_the_argmax():
  probs = sampling.distribution(LOGITS_1xV, SamplingConfig(temperature=0.0))
  np.testing.assert_array_equal(probs, [[1, 0, 0, 0, 0]])


def test_top_k_keeps_the_k_most_likely_renormalised():
  probs = sampling.distribution(LOGITS_1xV, SamplingConfig(top_k=2))
  np.testing.assert_allclose(probs, [[0.4 / 0.7, 0.3 / 0.7, 0, 0, 0]], rtol=1e-6)


def test_top_p_keeps_the_smallest_prefix_reaching_p():
  # 0.4 + 0.3 = 0.7 < 0.75, so the nucleus needs the third token too.
  probs = sampling.distribution(LOGITS_1xV, SamplingConfig(top_p=0.75))
  np.testing.assert_allclose(probs, [[0.4 / 0.85, 0.3 / 0.85, 0.15 / 0.85, 0, 0]], rtol=1e-6)
  probs = sampling.distribution(LOGITS_1xV, SamplingConfig(top_p=0.1))
  np.testing.assert_array_equal(probs, [[1, 0, 0, 0, 0]])


def test_temperature_sharpens_and_flattens():
  cold = sampling.distribution(LOGITS_1xV, SamplingConfig(temperature=0.5))
  expected = np.array([0.4, 0.3, 0.15, 0.1, 0.05]) ** 2
  np.testing.assert_allclose(cold, [expected / expected.sum()], rtol=1e-5)


def test_samples_follow_the_distribution_and_repeat_with_the_key():
  cfg = SamplingConfig(temperature=1.0, top_k=4)
  logits_NxV = jnp.broadcast_to(LOGITS_1xV, (20_000, 5))
  keys = jax.random.split(jax.random.key(0), 20_000)
  draw = jax.jit(lambda k: sampling.sample(k, logits_NxV, cfg))
  tokens = draw(keys)
  freq = np.bincount(np.asarray(tokens), minlength=5) / 20_000
  np.testing.assert_allclose(freq, sampling.distribution(LOGITS_1xV, cfg)[0], atol=0.015)
  np.testing.assert_array_equal(draw(keys), tokens)


def test_each_row_depends_only_on_its_own_key():
  logits_BxV = jax.random.normal(jax.random.key(1), (4, 50))
  keys = jax.random.split(jax.random.key(2), 4)
  together = sampling.sample(keys, logits_BxV, SamplingConfig())
  alone = sampling.sample(keys[2:3], logits_BxV[2:3], SamplingConfig())
  assert int(together[2]) == int(alone[0])


@pytest.mark.parametrize("kw", [dict(temperature=-1.0), dict(top_k=-2), dict(top_p=0.0)])
def test_bad_settings_are_rejected(kw):
  with pytest.raises(ValueError):
    SamplingConfig(**kw)
