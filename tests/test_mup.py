"""muP (model.parametrization=mup): the multiplier of each parameter kind, muP at m = 1 equal to
the standard parametrization, and the coordinate check's slopes at tiny widths."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model import transformer
from model.config import ModelConfig
from train import optimizer
from train.config import TrainSettings
from train.studies import coord_check

# d_model 32 against a base of 8: m = 4 with the shapes of the sp model, so that the two can be
# compared parameter by parameter from the same key.
SP = ModelConfig(vocab_size=16, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64,
                 max_seq_len=8, tie_embeddings=False, qk_norm=True, dtype="float32")
MUP4 = dataclasses.replace(SP, parametrization="mup", base_width=8)
MUP1 = dataclasses.replace(SP, parametrization="mup", base_width=32)
TOKENS = jnp.array([[1, 5, 2, 9, 3, 3, 7, 0], [4, 4, 8, 1, 0, 2, 6, 5]])
HIDDEN = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


@functools.lru_cache(maxsize=None)
def _params(cfg: ModelConfig):
  return jax.jit(lambda key: transformer.create(cfg, key)[1])(jax.random.key(0))


def _paths(tree):
  return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _kind(path: str) -> str:
  if "norm" in path:
    return "vector"
  if "embed" in path:
    return "embedding"
  if "lm_head" in path:
    return "readout"
  assert any(h in path for h in HIDDEN), path
  return "hidden"


def _one_update(cfg: ModelConfig, weight_decay: float):
  """The first AdamW update of make() (after its warmup's lr-0 step) on a fixed gradient."""
  params = _params(cfg)
  tx = optimizer.make(TrainSettings(lr=0.1, warmup_steps=1, weight_decay=weight_decay,
                                    grad_clip=1e9), total_steps=10)
  grads = jax.tree.map(lambda x: jnp.cos(jnp.arange(x.size, dtype=jnp.float32).reshape(x.shape)),
                       params)

  @jax.jit
  def two(params):
    state = tx.init(params)
    _, state = tx.update(grads, state, params)  # step 0: lr 0
    return tx.update(grads, state, params)[0]

  return _paths(two(params))


def test_multiplier_table_per_parameter_kind_at_m4():
  """Catches any one kind's rule wrong: a hidden lr not divided by m (or the embedding's, a
  vector's or the readout's divided), the hidden init not divided by sqrt(m), the embedding or
  readout init scaled, the logit multiplier not 1/m, the attention scale not sqrt(base_dh)/dh."""
  assert MUP4.width_mult == 4.0 and MUP4.output_mult == 0.25
  assert MUP4.attn_scale == pytest.approx(2.0 / 16)  # sqrt(16 / 4) / 16; sp: 1 / 4
  mults = _paths(optimizer.lr_multipliers(_params(MUP4)))
  expected = {"embedding": 1.0, "hidden": 0.25, "readout": 1.0, "vector": 1.0}
  assert {_kind(p) for p in mults} == set(expected)
  for path, mult in mults.items():
    assert mult == expected[_kind(path)], path
  sp, mup = _paths(_params(SP)), _paths(_params(MUP4))
  for path in sp:  # the same key draws the same normals: hidden init halved, the rest equal
    scale = 0.5 if _kind(path) == "hidden" else 1.0
    np.testing.assert_allclose(mup[path], sp[path] * scale, rtol=1e-6, err_msg=path)
  # The update make() applies: the hidden matrices' is a quarter of sp's on the same gradient
  # (no weight decay, whose term depends on the differing weights), the rest equal.
  u_sp, u_mup = _one_update(SP, 0.0), _one_update(MUP4, 0.0)
  for path in u_sp:
    np.testing.assert_allclose(u_mup[path], u_sp[path] * expected[_kind(path)], rtol=1e-6,
                               err_msg=path)


def test_mup_logits_are_the_readout_over_m():
  """Catches: the 1/m readout multiplier missing, or applied to the embedding's input use too:
  with the hidden weights and the scores' scale of sp put back, muP's logits are sp's / m."""
  sp_params = _params(SP)
  undo = dataclasses.replace(MUP4, base_head_dim=16)  # attn scale back to 1/sqrt(16)
  assert undo.attn_scale == SP.attn_scale
  logits_sp = transformer.apply(transformer.abstract(SP)[0], sp_params, TOKENS)
  logits_mup = transformer.apply(transformer.abstract(undo)[0], sp_params, TOKENS)
  np.testing.assert_allclose(logits_mup, logits_sp / 4, rtol=1e-5, atol=1e-7)


def test_mup_at_m1_is_exactly_sp():
  """Catches a muP rule that is not the identity at the base width (an init, logit or score
  scale, or a learning rate multiplier off by a rounding or a factor): params, logits and one
  AdamW update with weight decay are bit-identical to sp's."""
  assert MUP1.width_mult == 1.0 and MUP1.attn_scale == SP.attn_scale
  for path, x in _paths(_params(SP)).items():
    np.testing.assert_array_equal(_paths(_params(MUP1))[path], x, err_msg=path)
  logits = [transformer.apply(transformer.abstract(c)[0], _params(c), TOKENS) for c in (SP, MUP1)]
  np.testing.assert_array_equal(logits[1], logits[0])
  u_sp, u_mup = _one_update(SP, 0.1), _one_update(MUP1, 0.1)
  for path in u_sp:
    np.testing.assert_array_equal(u_mup[path], u_sp[path], err_msg=path)


@pytest.mark.parametrize("settings, message", [
    (dict(parametrization="mu"), "model.parametrization"),
    (dict(base_width=8), "model.base_width is read only by muP"),
    (dict(parametrization="mup", base_width=-1), "model.base_width must be >= 0"),
    (dict(parametrization="mup", n_layers=2, moe=dict(n_experts=4, top_k=1)), "not built for MoE"),
])
def test_bad_mup_settings_are_one_line_errors(settings, message):
  """Catches: a typo'd parametrization or a base width that sp would silently ignore."""
  with pytest.raises(ValueError, match=message) as e:
    ModelConfig(**{**dataclasses.asdict(SP), **settings})
  assert "\n" not in str(e.value)


TINY = coord_check.CoordCheck(widths=(16, 32, 64), base_width=16, n_layers=1, n_heads=2,
                              vocab_size=32, seq_len=8, batch_size=4, steps=3, lr=1e-2, seeds=1)


def test_coordinate_check_is_flat_under_mup_and_a_wrong_readout_multiplier_shows(monkeypatch):
  """Catches a wrong muP multiplier by its effect on activations: under muP every layer's RMS
  after 3 Adam steps is nearly flat in width (|slope| < 0.3 over d_model 16..64), and with the
  readout multiplier 1/m replaced by 1 the logits grow with width (slope > 0.5)."""
  mup = coord_check.run(TINY, "mup")["slopes"]
  for layer, per_step in mup.items():
    assert abs(per_step[-1]) < 0.3, (layer, per_step)
  monkeypatch.setattr(ModelConfig, "output_mult", property(lambda self: 1.0))
  wrong = coord_check.run(dataclasses.replace(TINY, widths=(16, 64)), "mup")["slopes"]
  assert wrong["logits"][-1] > 0.5, wrong["logits"]


def test_layer_outputs_end_in_the_models_logits():
  """Catches the coordinate check's block-by-block forward drifting from the model's own."""
  cfg = TINY.model_config(16, "mup")
  params = jax.jit(lambda key: transformer.create(cfg, key)[1])(jax.random.key(1))
  graphdef = transformer.abstract(cfg)[0]
  outs = coord_check.layer_outputs(nnx.merge(graphdef, params), TOKENS)
  assert list(outs) == ["embedding", "block0.attn", "block0.mlp", "logits"]
  np.testing.assert_allclose(outs["logits"], transformer.apply(graphdef, params, TOKENS),
                             rtol=1e-5, atol=1e-6)


def test_slopes_fit_log_rms_against_log_width():
  """Catches a fit on linear axes or against the wrong variable: RMS = 3 w^0.5 has slope 0.5."""
  widths = (8, 16, 64)
  rms = [{"x": np.array([3 * w ** 0.5, 2.0])} for w in widths]
  got = coord_check.slopes(widths, rms)["x"]
  assert got[0] == pytest.approx(0.5) and got[1] == pytest.approx(0.0, abs=1e-12)
