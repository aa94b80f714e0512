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


def _wsd(shape: str, **kw) -> optax.Schedule:
  # lr 1, warmup 4, 20 steps, decay over the last 0.2 * 20 = 4: steps 16..19, lr 0 at step 20.
  t = TrainSettings(**{**dict(lr=1.0, warmup_steps=4, steps=20, schedule="wsd",
                              decay_fraction=0.2, decay_shape=shape), **kw})
  return optimizer.schedule_for(t, t.steps)


@pytest.mark.parametrize("shape, quarter, last", [
    ("1-sqrt", 1 - 0.5, 1 - np.sqrt(0.75)),  # lr (1 - sqrt(f)) at fraction f of the decay
    ("linear", 0.75, 0.25),
    ("cosine", 0.5 * (1 + np.cos(np.pi / 4)), 0.5 * (1 + np.cos(3 * np.pi / 4))),
])
def test_wsd_warms_up_holds_then_decays_in_its_shape_to_zero(shape, quarter, last):
  """Catches: the decay starting one step early (step 16 below lr) or late (step 17 at lr), a
  shape swapped for another (the quarter point differs between all three: 0.5, 0.75, 0.854), a
  decay that ends above 0 or reaches 0 before the last update (step 19)."""
  f = _wsd(shape)
  got = {s: float(f(s)) for s in (3, 4, 15, 16, 17, 19, 20, 25)}
  want = {3: 0.75, 4: 1.0, 15: 1.0, 16: 1.0, 17: quarter, 19: last, 20: 0.0, 25: 0.0}
  assert got == pytest.approx(want, abs=1e-6)
  assert TrainSettings(steps=20, warmup_steps=4, schedule="wsd", decay_fraction=0.2).decay_start == 16


def test_wsd_mid_decay_and_constant_schedule():
  """Catches: 1-sqrt computed as sqrt(1 - f) or (1 - f)^2 (half way: 0.293 against 0.707 or
  0.25), and a constant schedule that decays or ends its warmup a step off."""
  assert float(_wsd("1-sqrt")(18)) == pytest.approx(1 - np.sqrt(0.5), abs=1e-6)
  t = TrainSettings(lr=0.3, warmup_steps=4, steps=20, schedule="constant")
  f = optimizer.schedule_for(t, t.steps)
  assert [float(f(s)) for s in (0, 2, 3, 4, 19, 20, 10**6)] == pytest.approx(
      [0.0, 0.15, 0.225, 0.3, 0.3, 0.3, 0.3], abs=1e-7)


def test_adamw_runs_on_the_chosen_schedule():
  """Catches: make() ignoring train.schedule (always cosine). Zero gradients: a decayed weight
  moves only by w * (1 - lr_s wd) at each step s, so three steps read back the schedule."""
  params = _params()
  t = _train_cfg(lr=0.5, warmup_steps=1, steps=4, schedule="wsd", decay_fraction=0.5)
  tx = optimizer.make(t, total_steps=t.steps)

  @jax.jit
  def three_steps(params):
    state, zeros, new = tx.init(params), jax.tree.map(jnp.zeros_like, params), params
    for _ in range(3):  # lr 0, 0.5, 0.5 (the decay starts at step 2 and runs at lr there)
      updates, state = tx.update(zeros, state, new)
      new = optax.apply_updates(new, updates)
    return new

  w, new = _paths(params)["['blocks']['attn']['wq'].value"], _paths(three_steps(params))
  np.testing.assert_allclose(new["['blocks']['attn']['wq'].value"], w * (1 - 0.05) ** 2, rtol=1e-6)
