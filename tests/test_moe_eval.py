"""MoE evaluation and initialisation: evaluation dispatches dropless (model.moe.eval_dispatch), the
drop fraction counts overflow exactly, and the MoE layer's output RMS at init matches dense's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model import layers
from model import moe
from model.config import ModelConfig


def _np_swiglu(x_NxD, w_gate_DxF, w_up_DxF, w_down_FxD):
  h = x_NxD @ w_gate_DxF
  return (h / (1.0 + np.exp(-h)) * (x_NxD @ w_up_DxF)) @ w_down_FxD


def test_dropless_eval_drops_nothing_and_equals_the_mixture_of_its_top_k_experts():
  """Training at capacity 0.5 drops assignments; for_eval() (eval_dispatch dropless, the default)
  drops none and gives, token by token, the renormalised top-2 router weights times those two
  experts' SwiGLUs, computed here in numpy. Catches: evaluation running the training dispatch,
  a dropped assignment, weights not renormalised, the wrong experts combined."""
  n, d, e, f, k = 6, 4, 4, 8, 2
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, d)).astype(np.float32)
  w_router = rng.normal(size=(d, e)).astype(np.float32)
  w_gate, w_up = (rng.normal(size=(e, d, f)).astype(np.float32) * 0.5 for _ in range(2))
  w_down = rng.normal(size=(e, f, d)).astype(np.float32) * 0.5
  train_cfg = moe.MoEConfig(n_experts=e, top_k=k, dispatch="capacity", capacity_factor=0.5)
  args = (jnp.asarray(x), jnp.asarray(w_router), jnp.asarray(w_gate), jnp.asarray(w_up),
          jnp.asarray(w_down))
  _, train_stats = moe.moe_ffn(*args, train_cfg)
  assert float(train_stats.drop_fraction) > 0  # the training dispatch does drop here
  out, stats = moe.moe_ffn(*args, train_cfg.for_eval())
  assert float(stats.drop_fraction) == 0.0

  logits = x @ w_router
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  expected = np.zeros((n, d), np.float32)
  for t in range(n):
    top = np.argsort(-probs[t])[:k]
    for j in top:
      expected[t] += probs[t, j] / probs[t, top].sum() * _np_swiglu(x[t:t + 1], w_gate[j], w_up[j], w_down[j])[0]
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def _routed(expert_NxK):
  expert_NxK = jnp.asarray(expert_NxK, jnp.int32)
  n, k = expert_NxK.shape
  e = int(expert_NxK.max()) + 1
  probs = jnp.full((n, e), 1.0 / e)
  return moe.Routing(expert_NxK, jnp.full((n, k), 1.0 / k), probs, jnp.log(probs))


@pytest.mark.parametrize("expert_NxK, capacity_factor, n_experts, dropped", [
    # 5 tokens, 2 experts, top-1, factor 1: C = ceil(5 / 2) = 3; expert 0 gets 4, keeps 3.
    ([[0], [0], [0], [0], [1]], 1.0, 2, 1),
    # 4 tokens, 3 experts, top-2, factor 1: C = ceil(8 / 3) = 3. First choices all expert 0:
    # 3 kept, 1 dropped; second choices 1, 1, 1, 2 all fit.
    ([[0, 1], [0, 1], [0, 1], [0, 2]], 1.0, 3, 1),
    # The same at factor 0.75: C = ceil(2) = 2: first choices drop 2, second choices drop 1.
    ([[0, 1], [0, 1], [0, 1], [0, 2]], 0.75, 3, 3),
])
def test_drop_fraction_counts_the_overflow_by_hand(expert_NxK, capacity_factor, n_experts, dropped):
  """The drop fraction is the dropped assignments over all N * k, with C = ceil(factor N k / E).
  Catches: C rounded down or off by one, a slot counted from 1, drops counted per token."""
  r = _routed(expert_NxK)
  n, k = r.expert_NxK.shape
  d, f = 2, 3
  x = jnp.ones((n, d))
  w = [jnp.ones((n_experts, d, f)), jnp.ones((n_experts, d, f)), jnp.ones((n_experts, f, d))]
  _, drop = moe.capacity_moe(x, r, *w, capacity_factor=capacity_factor)
  assert float(drop) == pytest.approx(dropped / (n * k), abs=1e-7)


def test_eval_step_logs_the_drop_fraction_of_the_eval_dispatch():
  """The eval step's router metrics: with a graphdef of ModelConfig.for_eval() (dropless) the
  drop fraction is 0 and the loss is the plain cross-entropy; with training's graphdef (capacity
  0.25) it is above 0. eval_dispatch='same' keeps training's dispatch. Catches: the evaluation
  graphdef built from the training config, the drop metric missing from evaluation."""
  from model import transformer
  from train import step as step_lib

  cfg = ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32,
                    moe=moe.MoEConfig(n_experts=4, top_k=2, dispatch="capacity",
                                      capacity_factor=0.25))
  graphdef, params = transformer.create(cfg, jax.random.key(0))
  batch = jax.random.randint(jax.random.key(1), (2, 9), 0, 32)
  eval_graphdef = transformer.abstract(cfg.for_eval())[0]
  loss, n, sums = step_lib.make_eval_metrics_step(eval_graphdef, pad_id=-1)(params, batch)
  assert float(sums["moe/drop_fraction"]) == 0.0
  assert float(jnp.sum(sums["moe/expert_share"])) / float(n) == pytest.approx(1.0, abs=1e-6)
  ref_loss, ref_n = step_lib.make_eval_step(
      transformer.abstract(cfg.for_eval())[0], pad_id=-1)(params, batch)
  assert (float(loss), int(n)) == (pytest.approx(float(ref_loss)), int(ref_n))
  _, n, sums = step_lib.make_eval_metrics_step(graphdef, pad_id=-1)(params, batch)
  assert float(sums["moe/drop_fraction"]) / float(n) > 0.1
  same = ModelConfig(**{**cfg.__dict__, "moe": moe.MoEConfig(
      n_experts=4, top_k=2, dispatch="capacity", capacity_factor=0.25, eval_dispatch="same")})
  assert same.for_eval() == same
  cap = moe.MoEConfig(n_experts=4, dispatch="capacity", eval_dispatch="capacity").for_eval()
  assert (cap.dispatch, cap.capacity_factor) == ("capacity", 2.0)


def _init_rms_ratio(n_experts: int, top_k: int, init_scale: str) -> float:
  """RMS of the MoE layer's output over dense SwiGLU's at init, the study's shapes (d_model 128,
  d_ff 512, each expert d_ff / k wide), on unit-RMS inputs (an RMSNorm's output)."""
  shape = dict(vocab_size=64, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=512)
  x = jax.random.normal(jax.random.key(1), (4, 64, 128))
  x = x / jnp.sqrt(jnp.mean(x ** 2, -1, keepdims=True))
  dense = layers.SwiGLU(ModelConfig(**shape), nnx.Rngs(0))
  cfg = ModelConfig(**shape, moe=moe.MoEConfig(n_experts=n_experts, top_k=top_k,
                                               d_expert=512 // top_k, init_scale=init_scale))
  y, _ = layers.MoEFFN(cfg, nnx.Rngs(0))(x)
  return float(jnp.sqrt(jnp.mean(y ** 2) / jnp.mean(dense(x) ** 2)))


@pytest.mark.parametrize("n_experts, top_k", [(8, 1), (8, 2)])
def test_moe_output_rms_at_init_matches_dense(n_experts, top_k):
  """init_scale=match_dense (the default): within 10% of dense. 'standard' (the dense init for
  every expert) is about 1/6 of dense at top-1 (the gate is the chosen probability, ~1/E) and 1/2
  at top-2 (two half-width experts averaged). Catches: the gain left out, applied to the wrong
  matrix, or computed for uniform routing at top-1 (1/E, not the larger chosen probability)."""
  assert 0.9 < _init_rms_ratio(n_experts, top_k, "match_dense") < 1.1
  assert _init_rms_ratio(n_experts, top_k, "standard") < 0.6


@pytest.mark.parametrize("kwargs, needle", [
    (dict(n_experts=4, eval_dispatch="magic"), "model.moe.eval_dispatch='magic' is unknown"),
    (dict(n_experts=4, eval_dispatch="capacity", eval_capacity_factor=0.0),
     "model.moe.eval_capacity_factor=0.0 must be > 0"),
    (dict(n_experts=4, init_scale="big"), "model.moe.init_scale='big' is unknown"),
])
def test_bad_eval_or_init_setting_is_one_line_error(kwargs, needle):
  with pytest.raises(ValueError, match=needle):
    moe.MoEConfig(**kwargs)
