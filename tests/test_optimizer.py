"""train/optimizer.py: which weights AdamW decays, the warmup-cosine schedule at chosen steps, and
clipping by the global norm of all gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from model import transformer
from model.config import ModelConfig
from train import optimizer
from train.config import TrainSettings

CFG = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=16,
                  max_seq_len=8, tie_embeddings=False)


def _train_cfg(**kw) -> TrainSettings:
  return TrainSettings(**{**dict(lr=0.5, warmup_steps=1, weight_decay=0.1, grad_clip=1.0), **kw})


@functools.lru_cache(maxsize=None)
def _params():
  # One compile of the whole init: its eager ops compile one by one, slowly on 2 cores.
  return jax.jit(lambda key: transformer.create(CFG, key)[1])(jax.random.key(0))


def _paths(tree):
  return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_weight_decay_shrinks_matrices_and_skips_norms_and_the_embedding():
  """Catches: the decay mask dropped from AdamW (norm scales and the embedding decayed too), or
  its default flipped so that no matrix is decayed."""
  params = _params()
  tx = optimizer.make(_train_cfg(), total_steps=10)

  @jax.jit
  def two_steps(params):
    state, zeros, new = tx.init(params), jax.tree.map(jnp.zeros_like, params), params
    for _ in range(2):  # step 0 runs at lr 0 (the warmup's start); step 1 at the peak, lr = 0.5
      updates, state = tx.update(zeros, state, new)
      new = optax.apply_updates(new, updates)
    return new

  new = two_steps(params)
  # Zero gradients: Adam's own update is 0, so all that moves a weight is decay, w * (1 - lr wd).
  before, after = _paths(params), _paths(new)
  decayed, kept = [], []
  for name, w in before.items():
    if "norm" in name or "embed" in name:
      np.testing.assert_array_equal(after[name], w, err_msg=name)
      kept.append(name)
    else:
      np.testing.assert_allclose(after[name], w * (1 - 0.5 * 0.1), rtol=1e-6, err_msg=name)
      decayed.append(name)
  assert any("embed" in n for n in kept) and any("norm" in n for n in kept)
  assert any("wq" in n for n in decayed) and any("w_down" in n for n in decayed)


@pytest.mark.parametrize("step, lr", [
    (0, 0.0), (2, 0.5), (4, 1.0),  # linear warmup over 4 steps to the peak
    (8, 0.1 + 0.9 * 0.5),  # half way through the cosine: the mean of peak and end
    (12, 0.1), (20, 0.1),  # lr / 10 at the end and after it
])
def test_schedule_warms_up_linearly_then_decays_by_cosine_to_a_tenth(step, lr):
  """Catches: the warmup one step longer or shorter than asked, a cosine that ends at 0 instead of
  lr / 10, or one that ends at a step other than total_steps."""
  assert float(optimizer.schedule(1.0, 4, 12)(step)) == pytest.approx(lr, abs=1e-6)


def test_gradients_are_clipped_by_their_global_norm():
  """Catches: clipping each element (or each tensor) by the threshold instead of scaling all
  gradients together by threshold / global norm. Adam hides the gradient's scale from the update,
  so the test reads Adam's first moment: (1 - b1) times the clipped gradient."""
  params = _params()
  tx = optimizer.make(_train_cfg(grad_clip=1.0), total_steps=10)
  leaves, treedef = jax.tree.flatten(params)
  grads_list = [jnp.zeros_like(x) for x in leaves]
  grads_list[0] = grads_list[0].at[(0,) * grads_list[0].ndim].set(3.0)
  grads_list[1] = grads_list[1].at[(0,) * grads_list[1].ndim].set(4.0)  # global norm 5
  grads = jax.tree.unflatten(treedef, grads_list)
  _, state = jax.jit(lambda g, p: tx.update(g, tx.init(p), p))(grads, params)
  mu = jax.tree.leaves(optax.tree_utils.tree_get(state, "mu"))
  np.testing.assert_allclose(mu[0][(0,) * mu[0].ndim], 0.1 * 3.0 / 5.0, rtol=1e-6)
  np.testing.assert_allclose(mu[1][(0,) * mu[1].ndim], 0.1 * 4.0 / 5.0, rtol=1e-6)
