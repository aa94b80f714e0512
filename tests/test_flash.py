"""model/flash.py: exact against reference attention, memory linear in n, same training losses."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from model import flash
from model.attention import reference_attention
from tests.helpers import tiny_config

TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


def _flash_and_reference(q, k, v, do, masks, *, causal, block_q, block_k):
  """Outputs and (dq, dk, dv) for cotangent do, of flash and of reference, in one compile.

  Compiled with LLVM at -O0: that halves the compile time, which dominates these tests, and leaves
  the optimised HLO, and so the arithmetic, as it is.
  """

  def outputs_and_grads(fn):
    out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, causal=causal, **masks), q, k, v)
    return (out, *vjp(do))

  def both(q, k, v, do):
    return (outputs_and_grads(functools.partial(flash.flash_attention, block_q=block_q, block_k=block_k)),
            outputs_and_grads(reference_attention))

  compiled = jax.jit(both).lower(q, k, v, do).compile({"xla_backend_optimization_level": 0})
  return compiled(q, k, v, do)


def _assert_flash_matches_reference(b, t, s, kv, g, dh, dtype, *, causal, block_q, block_k,
                                    masks=None, seed=0):
  """Each of out, dq, dk, dv within TOLERANCE[dtype] * max(1, largest reference magnitude)."""
  rng = np.random.default_rng(seed)  # numpy, not jax.random: no compile per shape
  q, do = (jnp.asarray(rng.standard_normal((b, t, kv * g, dh)), dtype) for _ in range(2))
  k, v = (jnp.asarray(rng.standard_normal((b, s, kv, dh)), dtype) for _ in range(2))
  got, want = _flash_and_reference(q, k, v, do, masks or {}, causal=causal, block_q=block_q,
                                   block_k=block_k)
  for name, a, e in zip(("out", "dq", "dk", "dv"), got, want):
    assert a.shape == e.shape and a.dtype == e.dtype, name
    a, e = np.asarray(a, np.float32), np.asarray(e, np.float32)
    bound = TOLERANCE[dtype] * max(1.0, float(np.abs(e).max()))
    err = float(np.abs(a - e).max())
    assert err <= bound, f"{name}: max error {err:.3g} > {bound:.3g}"


def _packed_segments(rng: np.random.Generator, b: int, t: int) -> jax.Array:
  """Sorted segment ids, as packing documents into one sequence gives."""
  return jnp.asarray(np.cumsum(rng.random((b, t)) < 0.15, axis=1), jnp.int32)


@settings(max_examples=7, deadline=None, derandomize=True)
@given(
    dtype=st.sampled_from([jnp.float32, jnp.bfloat16]),
    b=st.integers(1, 2),
    kv=st.sampled_from([1, 2]),
    g=st.sampled_from([1, 2, 3]),  # g == 1: MHA; kv == 1: MQA; else GQA
    dh=st.sampled_from([8, 16]),
    t=st.integers(1, 70),
    causal=st.booleans(),
    segments=st.booleans(),
    block_q=st.sampled_from([8, 16, 32]),
    block_k=st.sampled_from([8, 16, 32]),
)
def test_flash_matches_reference_on_drawn_shapes(dtype, b, kv, g, dh, t, causal, segments,
                                                 block_q, block_k):
  masks = {}
  if segments:
    seg = _packed_segments(np.random.default_rng(t), b, t)
    masks = dict(q_segment_ids_BxT=seg, kv_segment_ids_BxS=seg)
  _assert_flash_matches_reference(b, t, t, kv, g, dh, dtype, causal=causal, block_q=block_q,
                                  block_k=block_k, masks=masks)


def test_gqa_with_lengths_not_block_multiples_matches_reference():
  _assert_flash_matches_reference(2, 45, 45, 2, 2, 16, jnp.float32, causal=True, block_q=16,
                                  block_k=8)


def test_bfloat16_matches_reference_within_2e_2():
  _assert_flash_matches_reference(2, 64, 64, 2, 2, 16, jnp.bfloat16, causal=True, block_q=16,
                                  block_k=16)


def test_segment_ids_match_reference():
  seg = _packed_segments(np.random.default_rng(1), 2, 50)
  _assert_flash_matches_reference(2, 50, 50, 1, 4, 8, jnp.float32, causal=True, block_q=16,
                                  block_k=16, masks=dict(q_segment_ids_BxT=seg, kv_segment_ids_BxS=seg))


def test_sliding_window_with_segments_matches_reference_and_skips_blocks():
  """Window 13 over 70 tokens in blocks of 8 (forward and backward, with packed segments): a
  window off by one, or a skipped key block the window still reaches, breaks the match; the
  window must also change the result, so the comparison can fail."""
  seg = _packed_segments(np.random.default_rng(2), 2, 70)
  masks = dict(q_segment_ids_BxT=seg, kv_segment_ids_BxS=seg, window=13)
  _assert_flash_matches_reference(2, 70, 70, 2, 2, 8, jnp.float32, causal=True, block_q=8,
                                  block_k=8, masks=masks)
  plan = flash._Plan(causal=True, block_q=8, block_k=8, kv_len=70, kv_padded=True, window=13)
  starts = flash._key_block_starts(plan, jnp.arange(72)[None], 9)
  np.testing.assert_array_equal(starts, [0, 0, 0, 1, 2, 3, 4, 5, 6])  # (8i - 12) // 8
  q = jnp.asarray(np.random.default_rng(3).standard_normal((1, 40, 2, 8)), jnp.float32)
  k = v = q
  assert not np.allclose(reference_attention(q, k, v, window=13), reference_attention(q, k, v))


def test_q_positions_decoding_against_a_cache_matches_reference():
  # Two sequences filled to different depths of a 70-slot cache, 3 new tokens each.
  positions = jnp.asarray([[9, 10, 11], [60, 61, 62]], jnp.int32)
  _assert_flash_matches_reference(2, 3, 70, 2, 2, 16, jnp.float32, causal=True, block_q=16,
                                  block_k=16, masks=dict(q_positions_BxT=positions))


def test_flash_inside_shard_map_matches_reference():
  # Data-parallel training runs the model per device inside shard_map, where loop carries must
  # be marked as varying over the mesh axis like the values the loop body makes from them.
  from jax.sharding import AxisType, PartitionSpec

  mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.standard_normal((jax.device_count(), 40, 4, 8)), jnp.float32)
  k, v = (jnp.asarray(rng.standard_normal((jax.device_count(), 40, 2, 8)), jnp.float32)
          for _ in range(2))

  def grads(fn):
    def local(q, k, v):
      return jax.lax.psum(jnp.sum(fn(q, k, v, causal=True) ** 2), "data")

    per_device = jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec("data"),) * 3,
                               out_specs=PartitionSpec())
    return jax.jit(jax.grad(per_device, argnums=(0, 1, 2)))(q, k, v)

  got = grads(functools.partial(flash.flash_attention, block_q=16, block_k=8))
  for a, e in zip(got, grads(reference_attention)):
    np.testing.assert_allclose(a, e, rtol=0, atol=1e-5 * max(1.0, float(jnp.abs(e).max())))


def test_causal_query_blocks_visit_only_key_blocks_up_to_the_diagonal():
  plan = flash._Plan(causal=True, block_q=256, block_k=128, kv_len=1024, kv_padded=False)
  ends = flash._key_block_ends(plan, jnp.arange(1024)[None, :], n_q=4, n_k=8)
  np.testing.assert_array_equal(ends, [2, 4, 6, 8])  # half the tiles of the full square


def test_decoding_visits_only_the_filled_part_of_the_cache():
  plan = flash._Plan(causal=True, block_q=1, block_k=128, kv_len=4096, kv_padded=False)
  ends = flash._key_block_ends(plan, jnp.asarray([[100], [300]]), n_q=1, n_k=32)
  np.testing.assert_array_equal(ends, [3])  # keys 0..383 of 4096: the deepest sequence decides


def _fwd_bwd_temp_bytes(fn, n: int) -> int:
  x = jax.ShapeDtypeStruct((1, n, 1, 16), jnp.float32)
  grad = jax.grad(lambda q, k, v: fn(q, k, v, causal=True).sum(), argnums=(0, 1, 2))
  return jax.jit(grad).lower(x, x, x).compile().memory_analysis().temp_size_in_bytes


def test_flash_forward_backward_memory_is_linear_in_n():
  small, large = _fwd_bwd_temp_bytes(flash.flash_attention, 2048), _fwd_bwd_temp_bytes(
      flash.flash_attention, 4096)
  assert large <= 2 * small + (1 << 20), (small, large)


def test_reference_memory_is_quadratic_so_the_linearity_check_can_fail():
  small, large = _fwd_bwd_temp_bytes(reference_attention, 1024), _fwd_bwd_temp_bytes(
      reference_attention, 2048)
  assert large > 3 * small, (small, large)


def test_training_with_flash_gives_the_reference_losses():
  """Three sharded train steps (the loop's step, packed documents isolated) with
  model.attention_impl=flash give reference's losses: catches flash's custom backward pass going
  wrong inside the real step, where the forward-only checks above cannot see it."""
  import jax

  from model.config import ModelConfig
  from sharding import mesh as mesh_lib
  from train import config as config_lib
  from train import loop, state as state_lib

  config = tiny_config("")
  train_settings = config_lib.resolve(config).train
  mesh = mesh_lib.make_mesh({"data": 1}, jax.devices()[:1])
  rows = np.random.default_rng(0).integers(1, 300, (8, 33)).astype(np.int32)
  rows[:, 10] = 0  # a document boundary inside every row
  losses = {}
  for impl in ("reference", "flash"):
    model_cfg = ModelConfig.from_dict({**config.model.to_dict(), "attention_impl": impl})
    training = state_lib.make_sharded_training(model_cfg, train_settings, mesh, 0, pad_id=-1,
                                               documents=(0, False))
    state = training.init(jax.random.key(0))
    losses[impl] = []
    for _ in range(3):
      state, metrics = training.train_step(
          state, loop.global_batch(rows, training.batch_sharding))
      losses[impl].append(float(metrics["loss"]))
  assert losses["flash"][-1] < losses["flash"][0]  # it trains (lr warms up from 0 at step 0)
  np.testing.assert_allclose(losses["flash"], losses["reference"], rtol=0, atol=1e-5)
