"""The train step's numerics: bfloat16 mixed precision (model.dtype) against float32.

Mixed precision means matmuls in bfloat16 while the parameters (the optimizer's master copy) and
Adam's moments stay float32. Both claims are read off the step itself: the jaxpr's dot_generals
and the state the step takes and returns; and the bfloat16 run must train as the float32 one does.
"""

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jcore

from model.config import ModelConfig
from sharding import mesh as mesh_lib
from tests.helpers import tiny_config
from train import state as state_lib
from train.config import TrainSettings

STEPS = 50


def _training(dtype: str):
  config = tiny_config("", **{"model.dtype": dtype, "train.steps": STEPS, "train.warmup_steps": 5})
  model_cfg = ModelConfig.from_dict(config.model.to_dict())
  mesh = mesh_lib.make_mesh({"data": 1}, devices=jax.devices()[:1])
  return config, state_lib.make_sharded_training(
      model_cfg, TrainSettings.from_config(config.train), mesh, 0, pad_id=0)


def _dot_dtypes(closed_jaxpr) -> collections.Counter:
  """{(lhs dtype, rhs dtype): count} of every dot_general, nested jaxprs (scan, remat) included."""
  out = collections.Counter()

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        out[tuple(str(v.aval.dtype) for v in eqn.invars)] += 1
      for p in eqn.params.values():
        for sub in p if isinstance(p, (list, tuple)) else [p]:
          if isinstance(sub, jcore.ClosedJaxpr):
            walk(sub.jaxpr)
          elif isinstance(sub, jcore.Jaxpr):
            walk(sub)

  walk(closed_jaxpr.jaxpr)
  return out


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_matmuls_run_in_the_compute_dtype_with_float32_master_weights(dtype):
  """Catches: model.dtype ignored (float32 matmuls under bfloat16), or parameters / moments
  stored in the compute dtype (the update would then round to bfloat16 every step)."""
  config, run = _training(dtype)
  batch = jax.ShapeDtypeStruct((config.train.batch_size, config.data.seq_len + 1), jnp.int32)
  dots = _dot_dtypes(jax.make_jaxpr(run.train_step)(run.abstract_state, batch))
  low = sum(n for pair, n in dots.items() if "bfloat16" in pair)
  if dtype == "bfloat16":
    # Every matmul has a bfloat16 operand (the backward pass's float32 cotangent of the float32
    # logits meets bfloat16 weights); none is float32 on both sides.
    assert low >= 12 and ("float32", "float32") not in dots, dots
  else:
    assert low == 0, dots
  floats = {str(x.dtype) for x in jax.tree.leaves(run.abstract_state)
            if jnp.issubdtype(x.dtype, jnp.floating)}
  assert floats == {"float32"}


@functools.lru_cache(maxsize=None)
def _losses(dtype: str) -> list[float]:
  config, run = _training(dtype)
  state = run.init(jax.random.key(0))
  rng = np.random.default_rng(0)
  # A learnable stream: each row counts up from a random start, so the loss falls far below
  # the uniform log(vocab) within 50 steps and rounding differences would show.
  starts = rng.integers(0, 200, (STEPS, config.train.batch_size, 1))
  losses = []
  for i in range(STEPS):
    batch = (starts[i] + np.arange(config.data.seq_len + 1)) % 256
    state, metrics = run.train_step(state, jnp.asarray(batch, jnp.int32))
    losses.append(float(metrics["loss"]))
  return losses


def test_bfloat16_trains_like_float32():
  """Catches: a bfloat16 path that does not learn (e.g. the update rounded away) or diverges
  from float32 (softmax or the loss computed in bfloat16)."""
  f32, bf16 = _losses("float32"), _losses("bfloat16")
  assert f32[-1] < 0.5 * f32[0]  # it learned something
  assert abs(np.mean(bf16[-5:]) - np.mean(f32[-5:])) < 0.02 * np.mean(f32[-5:]), (f32[-5:], bf16[-5:])


# --- The objective's pieces: token cross-entropy and the router losses ---------------------------

def test_token_loss_sums_count_and_sum_only_non_padding_targets():
  """Catches: the padding mask inverted (only padding counted) or dropped."""
  from train import step as step_lib

  logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.2, 0.2, 0.6], [0.1, 0.8, 0.1]]]))
  targets = jnp.array([[1, 0, 2]])  # pad_id 0: the middle target is padding
  ce_sum, n = step_lib.token_loss_sums(logits, targets, pad_id=0)
  assert float(n) == 2
  assert float(ce_sum) == pytest.approx(-np.log(0.25) - np.log(0.1), rel=1e-6)


def test_answer_targets_are_the_tokens_after_marker_and_key_and_only_they_are_counted():
  """Catches: the answer mask off by one (the key or the token after the answer counted instead)."""
  from train import step as step_lib

  inputs = jnp.array([[5, 1, 7, 8, 1, 9, 4]])  # marker 1: "? 7" answered by 8, "? 9" by 4
  targets = jnp.array([[1, 7, 8, 1, 9, 4, 3]])
  keep = step_lib.answer_targets(inputs, 1)
  assert keep.tolist() == [[False, False, True, False, False, True, False]]
  assert step_lib.answer_targets(inputs, None) is None
  logits = jnp.zeros((1, 7, 10))
  ce_sum, n = step_lib.token_loss_sums(logits, targets, pad_id=0, keep_BxT=keep)
  assert float(n) == 2 and float(ce_sum) == pytest.approx(2 * np.log(10), rel=1e-6)


def test_token_logps_equal_the_tempered_log_softmax_at_the_targets_and_its_gradient():
  """token_logps, the one log-probability of every objective, against log_softmax + gather, at
  temperature 1 and 0.7, from bfloat16 logits too (it computes in float32).

  Catches: the temperature dropped or multiplied, the logsumexp over the wrong axis."""
  from train import step as step_lib

  logits = jax.random.normal(jax.random.key(0), (2, 5, 11)) * 3.0
  targets = jax.random.randint(jax.random.key(1), (2, 5), 0, 11)

  def expected(x, temperature):
    logp = jax.nn.log_softmax(x.astype(jnp.float32) / temperature, axis=-1)
    return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]

  for temperature in (1.0, 0.7):
    got = step_lib.token_logps(logits, targets, temperature)
    assert got.dtype == jnp.float32 and got.shape == (2, 5)
    np.testing.assert_allclose(got, expected(logits, temperature), rtol=1e-6, atol=1e-6)
    grad = jax.grad(lambda x: step_lib.token_logps(x, targets, temperature).sum())(logits)
    want = jax.grad(lambda x: expected(x, temperature).sum())(logits)
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-6)
  half = logits.astype(jnp.bfloat16)
  np.testing.assert_allclose(step_lib.token_logps(half, targets), expected(half, 1.0), rtol=1e-6,
                             atol=1e-6)


def test_z_loss_is_the_weighted_sum_of_squared_logsumexp_over_counted_targets_and_its_gradient():
  """w * sum over non-padding targets of logsumexp(logits)^2, and its gradient
  w * 2 lse softmax(logits) at those positions (0 at padding), by hand.

  Catches: the square dropped (sum of lse: 3.41 + 1.10 + 3.07 against the squares' sum), the
  sign flipped, padding counted, the logsumexp over the wrong axis."""
  from train import step as step_lib

  logits_np = np.array([[[2.0, 1.0, 0.0], [0.0, 0.0, 0.0], [3.0, -1.0, 0.5]]], np.float32)
  targets = jnp.array([[1, 0, 2]])  # pad_id 0: the middle target is padding
  mask = step_lib.counted_targets(targets, 0)
  w = 1e-2

  def objective(x):
    return step_lib.z_loss_terms(x, mask, w)[0]

  lse = np.log(np.exp(logits_np).sum(-1))  # (1, 3)
  keep = np.array([[1.0, 0.0, 1.0]])
  assert float(objective(jnp.asarray(logits_np))) == pytest.approx(
      w * float(np.sum(lse**2 * keep)), rel=1e-6)
  softmax = np.exp(logits_np) / np.exp(logits_np).sum(-1, keepdims=True)
  np.testing.assert_allclose(jax.grad(objective)(jnp.asarray(logits_np)),
                             w * 2 * (lse * keep)[..., None] * softmax, rtol=1e-5, atol=1e-8)
  _, metrics = step_lib.z_loss_terms(jnp.asarray(logits_np), mask, w)
  assert float(metrics["z_loss"]) == pytest.approx(float(np.sum(lse**2 * keep)), rel=1e-6)
  assert step_lib.z_loss_terms(jnp.asarray(logits_np), mask, 0.0)[1] == {}


def test_lm_loss_adds_the_z_loss_of_the_models_logits_over_counted_targets():
  """lm_loss(z_loss=w) - lm_loss(z_loss=0) equals w * sum lse^2 of the model's own logits over
  the non-padding targets. Catches: train.z_loss logged but left out of the objective, or taken
  over the padded targets too."""
  from model import transformer
  from train import step as step_lib

  cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=16,
                    max_seq_len=8, init_std=0.5)  # logits far from 0: a sizeable z-loss
  graphdef, _ = transformer.abstract(cfg)
  batch = jax.random.randint(jax.random.key(1), (2, 7), 1, 16).at[:, 3].set(0)  # padding

  @jax.jit
  def terms(key):
    params = transformer.create(cfg, key)[1]
    logits = transformer.apply(graphdef, params, batch[:, :-1])
    lse = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
    by_hand = jnp.sum(lse**2 * (batch[:, 1:] != 0))
    (plain, n, _), (with_z, _, metrics) = (
        step_lib.lm_loss(graphdef, 0, z_loss=w)(params, batch) for w in (0.0, 0.1))
    return plain, with_z, n, by_hand, metrics["z_loss"]

  plain, with_z, n, by_hand, metric = terms(jax.random.key(0))
  assert int(n) == 2 * 6 - 2 and float(by_hand) > 1.0
  assert float(with_z - plain) == pytest.approx(0.1 * float(by_hand), rel=1e-5)
  assert float(metric) == pytest.approx(float(by_hand), rel=1e-5)


def test_router_terms_add_the_weighted_layer_mean_losses_times_the_count():
  """n (w_lb mean(lb) + w_z mean(z)) over the MoE layers.

  Catches: the router losses left out of the objective (only logged), the two weights swapped."""
  from model import moe
  from train import step as step_lib

  stats = moe.MoEStats(jnp.array([1.0, 3.0]), jnp.array([0.5, 1.5]), jnp.zeros(2),
                       jnp.full((2, 2), 0.5))
  objective, sums = step_lib.router_terms(stats, jnp.float32(10.0), (0.01, 0.001))
  assert float(objective) == pytest.approx(10.0 * (0.01 * 2.0 + 0.001 * 1.0), rel=1e-6)
  assert float(sums["moe/load_balance_loss"]) == pytest.approx(20.0)


def test_router_losses_change_the_gradient_of_an_moe_model():
  """The gradient of lm_loss with router-loss weights differs from the one without, in the
  router's weights. Catches: the router losses computed and logged but not in the objective."""
  from model import moe, transformer
  from train import step as step_lib

  cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=16,
                    max_seq_len=8, moe=moe.MoEConfig(n_experts=4, top_k=1))
  graphdef, _ = transformer.abstract(cfg)
  batch = jax.random.randint(jax.random.key(1), (2, 7), 1, 16)

  @jax.jit
  def grads(key):  # one compile, initialisation included: eager init costs more on 2 cores
    params = transformer.create(cfg, key)[1]
    return [jax.grad(lambda p: step_lib.lm_loss(graphdef, 0, w)(p, batch)[0])(params)
            for w in ((0.0, 0.0), (1.0, 1.0))]

  without, with_router = grads(jax.random.key(0))
  diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), without, with_router)
  router = [d for path, d in jax.tree_util.tree_leaves_with_path(diff)
            if "router" in jax.tree_util.keystr(path)]
  assert router and max(router) > 1e-4
