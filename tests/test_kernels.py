"""model/kernels.py and the dispatch in model/attention.py, on CPU.

The wrappers are tested here on what CPU can run: the cuDNN wrapper through the same
jax.nn.dot_product_attention call with implementation="xla", the Pallas GPU (Triton) kernel in
Pallas interpret mode, and the Pallas TPU kernel under pltpu.force_tpu_interpret_mode(). The
kernels themselves on their hardware need a GPU or TPU run.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from model import kernels
from model.attention import attention, available_implementations, reference_attention
from model.flash import flash_attention


def _inputs(b, t, s, h, kv, dh, seed=0):
  rng = np.random.default_rng(seed)
  q, do = (jnp.asarray(rng.standard_normal((b, t, h, dh)), jnp.float32) for _ in range(2))
  k, v = (jnp.asarray(rng.standard_normal((b, s, kv, dh)), jnp.float32) for _ in range(2))
  return q, k, v, do


def _assert_matches_reference(fn, b, t, s, h, kv, dh, *, causal, masks=None):
  """Output and gradients of fn within 1e-5 (float32) of reference's."""
  q, k, v, do = _inputs(b, t, s, h, kv, dh)
  masks = masks or {}

  def outputs_and_grads(q, k, v, do):
    results = []
    for f in (fn, reference_attention):
      out, vjp = jax.vjp(lambda q, k, v: f(q, k, v, causal=causal, **masks), q, k, v)
      results.append((out, *vjp(do)))
    return results

  # LLVM -O0 halves the compile time, which dominates these tests; the HLO is unchanged.
  compiled = jax.jit(outputs_and_grads).lower(q, k, v, do).compile(
      {"xla_backend_optimization_level": 0})
  got, want = compiled(q, k, v, do)
  for name, a, e in zip(("out", "dq", "dk", "dv"), got, want):
    np.testing.assert_allclose(a, e, atol=1e-5 * max(1.0, float(jnp.abs(e).max())), rtol=0,
                               err_msg=name)


def _segments(b, t, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(np.cumsum(rng.random((b, t)) < 0.15, axis=1), jnp.int32)


def test_unavailable_kernel_raises_one_line_naming_backend_and_alternatives():
  x = jnp.ones((1, 8, 2, 16))
  with pytest.raises(ValueError) as info:
    attention(x, x, x, implementation="cudnn")
  message = str(info.value)
  assert "\n" not in message
  assert "'cpu'" in message and "flash" in message and "reference" in message and "auto" in message


def test_cpu_has_reference_and_flash_only():
  assert available_implementations() == ("flash", "reference")


def test_auto_picks_flash_on_cpu():
  q, k, v, _ = _inputs(1, 20, 20, 4, 2, 8)
  auto = jax.jit(functools.partial(attention, implementation="auto"))(q, k, v)
  np.testing.assert_array_equal(auto, jax.jit(flash_attention)(q, k, v))


def test_cudnn_wrapper_rejects_inputs_cudnn_cannot_take_in_one_line():
  x = jnp.ones((1, 8, 2, 16), jnp.float32)
  with pytest.raises(ValueError, match="cudnn attention needs") as info:
    kernels.dot_product_attention(x, x, x)
  assert "\n" not in str(info.value)


_xla_dot_product_attention = functools.partial(kernels.dot_product_attention, implementation="xla")


def test_dot_product_attention_wrapper_gqa_causal_segment_ids_match_reference():
  seg = _segments(2, 24)
  _assert_matches_reference(_xla_dot_product_attention, 2, 24, 24, 4, 2, 16, causal=True,
                            masks=dict(q_segment_ids_BxT=seg, kv_segment_ids_BxS=seg))


def test_dot_product_attention_wrapper_decoding_with_q_positions_matches_reference():
  positions = jnp.asarray([[4, 5], [20, 21]], jnp.int32)
  _assert_matches_reference(_xla_dot_product_attention, 2, 2, 24, 4, 1, 16, causal=True,
                            masks=dict(q_positions_BxT=positions))


_pallas_gpu_interpreted = functools.partial(kernels.pallas_gpu_attention, interpret=True)


def test_pallas_gpu_kernel_gqa_causal_segment_ids_padded_length_matches_reference():
  seg = _segments(1, 40)  # 40 is padded to 64: two 32-row backward tiles
  _assert_matches_reference(_pallas_gpu_interpreted, 1, 40, 40, 4, 2, 16, causal=True,
                            masks=dict(q_segment_ids_BxT=seg, kv_segment_ids_BxS=seg))


def test_pallas_decoding_with_q_positions_falls_back_to_flash():
  q, k, v, _ = _inputs(2, 2, 24, 4, 2, 8)
  positions = jnp.asarray([[4, 5], [20, 21]], jnp.int32)
  got = jax.jit(functools.partial(_pallas_gpu_interpreted, q_positions_BxT=positions))(q, k, v)
  want = jax.jit(functools.partial(flash_attention, q_positions_BxT=positions))(q, k, v)
  np.testing.assert_array_equal(got, want)


def test_pallas_tpu_kernel_gqa_causal_segment_ids_matches_reference():
  seg = _segments(1, 100)
  with pltpu.force_tpu_interpret_mode():
    _assert_matches_reference(kernels.pallas_tpu_attention, 1, 100, 100, 2, 1, 32, causal=True,
                              masks=dict(q_segment_ids_BxT=seg, kv_segment_ids_BxS=seg))


def _has_pallas_call(fn, q, k, v) -> bool:
  return "pallas_call" in str(jax.make_jaxpr(fn)(q, k, v))


# (t, s, q_positions, segment ids for q and kv: "same" array, "equal" copies, or none)
_CALLS = {
    "self_attention": (32, 32, False, None),
    "padded_length": (40, 40, False, None),
    "one_segment_array": (32, 32, False, "same"),
    "two_equal_segment_arrays": (32, 32, False, "equal"),
    "t_below_s": (8, 32, False, None),
    "q_positions": (32, 32, True, None),
}


def _call(name, kv=1):
  t, s, positions, segments = _CALLS[name]
  q, k, v, _ = _inputs(1, t, s, 2, kv, 16)
  masks = {}
  if positions:
    masks["q_positions_BxT"] = jnp.arange(s - t, s)[None]
  if segments:
    seg = _segments(1, t)
    masks["q_segment_ids_BxT"] = seg
    masks["kv_segment_ids_BxS"] = seg if segments == "same" else jnp.array(seg)
  return (q, k, v), masks


@pytest.mark.parametrize("name", list(_CALLS))
def test_pallas_gpu_wrapper_jaxpr_has_a_pallas_call_exactly_when_it_claims_to_run_pallas(name):
  """On CPU the wrapper runs the Triton kernel in interpret mode: its jaxpr holds a pallas_call
  unless _pallas_falls_back says flash runs instead (and then holds none).

  Catches: a wrapper that always (or wrongly) falls back to flash while claiming Pallas, which
  the numeric tests cannot see, flash being right too."""
  (q, k, v), masks = _call(name)
  claims_pallas = not kernels._pallas_falls_back(
      q.shape[1], k.shape[1], masks.get("q_positions_BxT"), masks.get("q_segment_ids_BxT"),
      masks.get("kv_segment_ids_BxS"), one_segment_array=True)
  fn = functools.partial(kernels.pallas_gpu_attention, interpret=True, **masks)
  assert _has_pallas_call(fn, q, k, v) == claims_pallas
  if name in ("self_attention", "padded_length", "one_segment_array"):
    assert claims_pallas  # the common training calls do reach the kernel


@pytest.mark.parametrize("name", list(_CALLS))
def test_pallas_tpu_wrapper_jaxpr_has_a_pallas_call_exactly_when_it_claims_to_run_pallas(name):
  """The same for the Mosaic TPU kernel under force_tpu_interpret_mode (two segment arrays are
  fine there). Catches: a TPU wrapper that always falls back to flash."""
  (q, k, v), masks = _call(name)
  claims_pallas = not kernels._pallas_falls_back(
      q.shape[1], k.shape[1], masks.get("q_positions_BxT"), masks.get("q_segment_ids_BxT"),
      masks.get("kv_segment_ids_BxS"), one_segment_array=False)
  with pltpu.force_tpu_interpret_mode():
    has = _has_pallas_call(functools.partial(kernels.pallas_tpu_attention, **masks), q, k, v)
  assert has == claims_pallas
  if name in ("self_attention", "padded_length", "one_segment_array", "two_equal_segment_arrays"):
    assert claims_pallas
