"""model/layers.py: rotary position embedding against an independent numpy reference, and dense()'s
gradient against autodiff's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.primitives import dense
from model.rope import rope


def _numpy_rope(x_BxTxNxDh, positions_BxT, theta):
  """Hugging Face Llama's formula: x cos + rotate_half(x) sin, rotate_half(x) = (-x2, x1)."""
  dh = x_BxTxNxDh.shape[-1]
  inv_freq = 1.0 / theta ** (np.arange(0, dh, 2) / dh)
  angles_BxTxF = positions_BxT[..., None] * inv_freq
  emb = np.concatenate([angles_BxTxF, angles_BxTxF], axis=-1)[:, :, None, :]
  x1, x2 = x_BxTxNxDh[..., : dh // 2], x_BxTxNxDh[..., dh // 2:]
  rotate_half = np.concatenate([-x2, x1], axis=-1)
  return x_BxTxNxDh * np.cos(emb) + rotate_half * np.sin(emb)


def test_rope_matches_the_numpy_rotate_half_reference():
  """Catches: the rotation's sign flipped (rotating by -angle keeps every relative property but
  breaks converted Llama checkpoints), the halves swapped, frequencies growing with the index."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 5, 3, 8)).astype(np.float32)
  positions = np.array([[0, 1, 2, 3, 4], [7, 9, 30, 31, 100]])
  got = rope(jnp.asarray(x), jnp.asarray(positions), 10_000.0)
  np.testing.assert_allclose(got, _numpy_rope(x, positions, 10_000.0), atol=1e-5)


def test_rope_score_depends_only_on_the_distance_between_positions():
  """rope(q, m) . rope(k, n) is a function of m - n: the claim that makes RoPE relative.

  Catches: a rotation that is not orthogonal or not one rotation per frequency pair (e.g. q and k
  rotated by angles that do not cancel)."""
  rng = np.random.default_rng(1)
  q, k = (jnp.asarray(rng.standard_normal((1, 1, 1, 16)), jnp.float32) for _ in range(2))

  def score(m, n):
    return float(jnp.sum(rope(q, jnp.array([[m]]), 100.0) * rope(k, jnp.array([[n]]), 100.0)))

  assert score(5, 2) == pytest.approx(score(13, 10), abs=1e-4)
  assert score(5, 2) == pytest.approx(score(3, 0), abs=1e-4)
  assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-2)


def test_dense_gradients_are_bit_identical_to_autodiffs_matmul():
  """Catches: dense()'s custom VJP returning a weight gradient transposed, of the wrong shape
  (D == F hides a missing transpose, so both a widening and a narrowing projection are
  checked), or summed differently from autodiff's (the train step must stay bit-identical)."""
  keys = jax.random.split(jax.random.key(0), 3)
  for d, f in ((16, 48), (48, 16)):
    x = jax.random.normal(keys[0], (64, d))
    w = jax.random.normal(keys[1], (d, f))
    ct = jax.random.normal(keys[2], (64, f))
    ours = jax.grad(lambda x, w: jnp.sum(dense(x, w) * ct), argnums=(0, 1))(x, w)
    plain = jax.grad(lambda x, w: jnp.sum((x @ w) * ct), argnums=(0, 1))(x, w)
    assert ours[1].shape == (d, f)
    assert all(bool(jnp.all(a == b)) for a, b in zip(ours, plain))
