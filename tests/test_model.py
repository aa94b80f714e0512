"""The Transformer: shapes, GQA/MQA equivalence to MHA, causality, parameter count, overfitting."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from model import attention as attn_lib
from model import transformer
from model.config import ModelConfig, count_params, flops_per_token, kaplan_flops, training_flops

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                  max_seq_len=16)


def _tokens(b=2, t=12, seed=0):
  return jax.random.randint(jax.random.key(seed), (b, t), 0, CFG.vocab_size)


@pytest.mark.parametrize("kv", [4, 2, 1])
def test_logits_shape_and_dtype_for_mha_gqa_mqa(kv):
  cfg = dataclasses.replace(CFG, n_kv_heads=kv)
  graphdef, params = transformer.create(cfg, jax.random.key(0))
  logits = transformer.apply(graphdef, params, _tokens())
  assert logits.shape == (2, 12, cfg.vocab_size)
  assert logits.dtype == jnp.float32
  assert params["blocks"]["attn"]["wk"].shape == (cfg.n_layers, cfg.d_model, kv, cfg.head_dim)


def test_gqa_equals_mha_with_repeated_kv():
  """GQA with K kv heads == MHA whose kv heads are the GQA heads each repeated H/K times."""
  b, t, h, kv, dh = 2, 10, 8, 2, 16
  keys = jax.random.split(jax.random.key(1), 3)
  q = jax.random.normal(keys[0], (b, t, h, dh))
  k = jax.random.normal(keys[1], (b, t, kv, dh))
  v = jax.random.normal(keys[2], (b, t, kv, dh))
  gqa = attn_lib.attention(q, k, v, causal=True)
  mha = attn_lib.attention(q, jnp.repeat(k, h // kv, axis=2), jnp.repeat(v, h // kv, axis=2), causal=True)
  np.testing.assert_allclose(gqa, mha, atol=1e-6)


def test_reference_attention_matches_the_formula():
  b, t, h, dh = 1, 5, 2, 4
  keys = jax.random.split(jax.random.key(2), 3)
  q, k, v = (jax.random.normal(kk, (b, t, h, dh)) for kk in keys)
  scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(dh)
  scores = np.where(np.tril(np.ones((t, t), bool)), scores, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  expected = np.einsum("bhts,bshd->bthd", probs, v)
  np.testing.assert_allclose(attn_lib.attention(q, k, v, causal=True), expected, atol=1e-5)


def test_gqa_model_equals_mha_model_with_repeated_kv_weights():
  gqa_cfg = dataclasses.replace(CFG, n_kv_heads=2)
  mha_cfg = dataclasses.replace(CFG, n_kv_heads=4)
  graphdef, params = transformer.create(gqa_cfg, jax.random.key(0))
  mha_def, mha_params = transformer.create(mha_cfg, jax.random.key(0))
  for name in ("wq", "wo"):
    mha_params["blocks"]["attn"][name].set_value(params["blocks"]["attn"][name][...])
  for name in ("wk", "wv"):
    mha_params["blocks"]["attn"][name].set_value(jnp.repeat(params["blocks"]["attn"][name][...], 2, axis=2))
  for path in (("blocks", "mlp", "w_gate"), ("blocks", "mlp", "w_up"), ("blocks", "mlp", "w_down"), ("embed",)):
    src, dst = params, mha_params
    for p in path:
      src, dst = src[p], dst[p]
    dst.set_value(src[...])
  toks = _tokens()
  np.testing.assert_allclose(
      transformer.apply(graphdef, params, toks), transformer.apply(mha_def, mha_params, toks),
      atol=1e-5)


def test_future_tokens_change_no_earlier_logit():
  graphdef, params = transformer.create(CFG, jax.random.key(0))
  toks = _tokens(b=1, t=12)
  changed = toks.at[0, 7].set((toks[0, 7] + 1) % CFG.vocab_size)
  a = transformer.apply(graphdef, params, toks)
  b = transformer.apply(graphdef, params, changed)
  np.testing.assert_array_equal(a[0, :7], b[0, :7])
  assert not np.allclose(a[0, 7:], b[0, 7:])


def test_gradient_of_early_logit_ignores_future_tokens():
  graphdef, params = transformer.create(CFG, jax.random.key(0))
  emb = jax.random.normal(jax.random.key(3), (1, 12, CFG.d_model))

  def logit_at_4(e):
    model = nnx.merge(graphdef, params)
    positions = jnp.arange(12)[None]
    x = e
    state, body = model._layer_fn(model.blocks)  # the scanned layers, run by hand
    x, _ = jax.lax.scan(lambda c, s: (body(c, s, positions, None)[0], None), x, state)
    return model.logits(x)[0, 4].sum()

  g = jax.grad(logit_at_4)(emb)
  assert np.abs(g[0, 5:]).max() == 0.0
  assert np.abs(g[0, :5]).max() > 0.0


@pytest.mark.parametrize("tie,variant", [
    (True, {}), (False, {}), (True, dict(qk_norm=True, d_head=6)),
    (True, dict(n_kv_heads=4, kv_lora_rank=12, qk_rope_head_dim=4))], ids=["tied", "untied", "qknorm-dhead", "mla"])
def test_parameter_count_matches_config_arithmetic(tie, variant):
  cfg = dataclasses.replace(CFG, tie_embeddings=tie, **variant)
  _, params = transformer.create(cfg, jax.random.key(0))
  assert sum(x.size for x in jax.tree.leaves(params)) == count_params(cfg)["total"]


@pytest.mark.parametrize("variant", [
    {}, dict(moe=dict(n_experts=4, top_k=2)), dict(sliding_window=6, global_every=2, scan_layers=False),
    dict(n_kv_heads=4, kv_lora_rank=12, qk_rope_head_dim=4), dict(qk_norm=True, d_head=6)],
    ids=["gqa", "moe-top2", "window-6-and-global", "mla", "qknorm"])
def test_flops_per_token_is_6_matmul_weights_plus_attended_score_and_value_products(variant):
  """By hand: 6 x (every weight matrix a token multiplies by: attention projections, the SwiGLU
  or top_k experts and the router, the head) + 12 heads d_head per attended key and layer (causal:
  T / 2; a window w < T: w - w^2 / 2T). Catches: the head or the norm vectors miscounted, all
  experts counted, the window ignored, the causal half dropped."""
  cfg = ModelConfig.from_dict({**CFG.to_dict(), **variant})
  d, f, h, k, dh, v, t = 32, 64, 4, cfg.n_kv_heads, cfg.head_dim, 64, 16
  if cfg.kv_lora_rank:  # wq, wo, w_dkv, w_uk, w_uv, w_kr
    attn_w = 2 * d * h * dh + d * 12 + 12 * h * (dh - 4) + 12 * h * dh + d * 4
  else:
    attn_w = 2 * d * h * dh + 2 * d * k * dh
  ffn_w = 2 * 3 * d * f + d * 4 if cfg.moe.n_experts else 3 * d * f  # top 2 experts + router
  keys = [6 - 36 / 32, 8] if cfg.sliding_window else [8, 8]  # layer 2 of the window model: global
  want = 6 * (2 * (attn_w + ffn_w) + v * d) + 12 * h * dh * sum(keys)
  assert flops_per_token(cfg, t) == pytest.approx(want, rel=1e-12)
  assert training_flops(cfg, t, 1000) == pytest.approx(1000 * want, rel=1e-12)
  assert kaplan_flops(cfg, 1000) == 6 * count_params(cfg)["active_non_embedding"] * 1000


def test_flops_per_token_counts_what_xla_counts_for_a_forward_and_backward_pass():
  """flops_per_token(count_masked=True) x tokens within 10% of XLA's cost analysis of the
  gradient of lm_loss, on a model whose head and attention products are each ~30% of the total:
  catches either left out (or counted once instead of three times)."""
  from train import step as step_lib

  cfg = ModelConfig(vocab_size=256, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=64,
                    max_seq_len=128, scan_layers=False, dtype="float32")
  b, t = 2, 128
  graphdef, params = transformer.abstract(cfg)

  def fwd_bwd(p, batch):
    return jax.grad(lambda q: step_lib.lm_loss(graphdef, -1)(q, batch)[0])(p)

  cost = jax.jit(fwd_bwd).lower(params, jax.ShapeDtypeStruct((b, t + 1), jnp.int32)).compile()
  cost = cost.cost_analysis()
  xla = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]
  ours = flops_per_token(cfg, t, count_masked=True) * b * t
  head, attn = 6 * 256 * 32 * b * t, 12 * 2 * 16 * t * b * t
  assert min(head, attn) > 0.25 * ours
  assert abs(ours / xla - 1) < 0.1, (ours, xla)


@pytest.mark.parametrize("variant", [dict(scan_layers=False), dict(remat="full"), dict(remat="dots")])
def test_unrolled_and_rematerialised_layers_equal_the_scanned_model(variant):
  graphdef, params = transformer.create(CFG, jax.random.key(0))
  other_cfg = dataclasses.replace(CFG, **variant)
  other_def, other = transformer.create(other_cfg, jax.random.key(0))
  if not other_cfg.scan_layers:  # copy layer i of the stacked params into block i
    stacked = params["blocks"].to_pure_dict()
    for i in range(CFG.n_layers):
      nnx.replace_by_pure_dict(other["blocks"][i], jax.tree.map(lambda x: x[i], stacked))
    other["embed"].set_value(params["embed"][...])
  toks = _tokens()

  def loss(p, gd):
    return transformer.apply(gd, p, toks).sum()

  np.testing.assert_allclose(loss(params, graphdef), loss(other, other_def), rtol=1e-5)
  g1 = jax.grad(loss)(params, graphdef)
  g2 = jax.grad(loss)(other, other_def)
  np.testing.assert_allclose(g1["embed"][...], g2["embed"][...], atol=1e-5)


def test_bfloat16_compute_keeps_float32_logits_and_close_values():
  graphdef, params = transformer.create(CFG, jax.random.key(0))
  bf_def, _ = transformer.create(dataclasses.replace(CFG, dtype="bfloat16"), jax.random.key(0))
  toks = _tokens()
  out = transformer.apply(bf_def, params, toks)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, transformer.apply(graphdef, params, toks), atol=5e-2)


def test_tiny_model_overfits_one_batch():
  graphdef, params = transformer.create(CFG, jax.random.key(0))
  toks = _tokens(b=4, t=13, seed=5)
  tx = optax.adam(1e-2)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt):
    def loss_fn(p):
      logits = transformer.apply(graphdef, p, toks[:, :-1])
      return optax.softmax_cross_entropy_with_integer_labels(logits, toks[:, 1:]).mean()
    loss, g = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  first = None
  for _ in range(150):
    params, opt, loss = step(params, opt)
    first = loss if first is None else first
  assert first > 3.5 and loss < 0.1, (first, loss)


# --- packed documents -------------------------------------------------------------------------

def test_packed_documents_restart_positions_and_count_segments():
  """Catches a position that does not restart at a boundary (or restarts one token late), and a
  segment id that changes after the boundary token instead of at it (or before it, starts_after)."""
  from model.masks import packed_documents
  row = jnp.array([[5, 6, 0, 7, 8, 9, 0, 4]])  # 0 is the boundary
  positions, segments = packed_documents(row, 0)
  np.testing.assert_array_equal(positions, [[0, 1, 0, 1, 2, 3, 0, 1]])
  np.testing.assert_array_equal(segments, [[0, 0, 1, 1, 1, 1, 2, 2]])
  positions, segments = packed_documents(row, 0, starts_after=True)
  np.testing.assert_array_equal(positions, [[0, 1, 2, 0, 1, 2, 3, 0]])
  np.testing.assert_array_equal(segments, [[0, 0, 0, 1, 1, 1, 1, 2]])


def test_latent_attention_with_flash_equals_reference_in_logits_and_gradients():
  """MLA's keys carry a RoPE part broadcast over heads and its values come from the latent:
  flash must give reference's logits and parameter gradients through that path (catches a
  custom backward that mishandles the broadcast keys, or the latent's norm left out of it)."""
  cfg = dataclasses.replace(CFG, n_kv_heads=4, kv_lora_rank=12, qk_rope_head_dim=4)
  graphdef, params = transformer.create(cfg, jax.random.key(0))
  tokens = _tokens()

  def loss_and_grads(impl):
    gd, _ = transformer.abstract(dataclasses.replace(cfg, attention_impl=impl))
    return jax.value_and_grad(lambda p: jnp.mean(transformer.apply(gd, p, tokens) ** 2))(params)

  (ref_loss, ref_grads), (flash_loss, flash_grads) = loss_and_grads("reference"), loss_and_grads("flash")
  np.testing.assert_allclose(flash_loss, ref_loss, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(flash_grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_local_global_pattern_makes_every_second_layer_global():
  """With global_every=2 the second layer sees the whole prefix: the logits differ from every
  layer windowed and from none windowed (same weights), so the pattern reaches the layers; and a
  scanned model, whose layers share one body, refuses the pattern in one line."""
  base = dataclasses.replace(CFG, scan_layers=False, sliding_window=3)
  tokens = _tokens()
  graphdef, params = transformer.create(dataclasses.replace(base, global_every=2), jax.random.key(0))
  mixed = transformer.apply(graphdef, params, tokens)
  for other in (base, dataclasses.replace(base, sliding_window=0)):
    other_def, _ = transformer.abstract(other)
    assert float(jnp.max(jnp.abs(transformer.apply(other_def, params, tokens) - mixed))) > 1e-4
  with pytest.raises(ValueError, match="set model.scan_layers=False"):
    dataclasses.replace(base, global_every=2, scan_layers=True)


@pytest.mark.parametrize("impl", ["reference", "flash"])
def test_a_packed_document_has_the_logits_it_has_alone(impl):
  """Document B's logits after document A in one row equal B's logits alone, with every
  attention implementation that runs on CPU; without the document layout they differ (so the
  comparison can fail). Catches segment ids or positions not reaching attention and RoPE."""
  from train import step as step_lib
  assert impl in attn_lib.available_implementations()
  cfg = dataclasses.replace(CFG, attention_impl=impl)
  graphdef, params = transformer.create(cfg, jax.random.key(3))
  eot = 0
  a = jax.random.randint(jax.random.key(4), (1, 7), 1, CFG.vocab_size)
  b = jax.random.randint(jax.random.key(5), (1, 6), 1, CFG.vocab_size)
  alone = jnp.concatenate([jnp.array([[eot]]), b], axis=1)  # B as it starts: after end-of-text
  packed = jnp.concatenate([a, alone], axis=1)
  documents = (eot, False)
  logits_alone = transformer.apply(graphdef, params, alone, *step_lib.document_layout(alone, documents))
  logits_packed = transformer.apply(graphdef, params, packed,
                                    *step_lib.document_layout(packed, documents))
  np.testing.assert_allclose(logits_packed[:, a.shape[1]:], logits_alone, atol=1e-5, rtol=1e-5)
  leaky = transformer.apply(graphdef, params, packed)[:, a.shape[1]:]
  assert float(jnp.max(jnp.abs(leaky - logits_alone))) > 1e-2
