"""Vendor attention kernels behind the `attention` interface: cuDNN and the Pallas kernels JAX ships.

- "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")`, NVIDIA GPUs of compute capability
  8.0 or newer, bfloat16/float16 inputs, head dim a multiple of 8 up to 128 (256 from Hopper on).
  cuDNN takes K < H key/value heads natively, so GQA/MQA pass K/V through unrepeated.
- "pallas": on GPU the Triton flash kernel (jax.experimental.pallas.ops.gpu.attention), on TPU the
  Mosaic flash kernel (jax.experimental.pallas.ops.tpu.flash_attention).

`available(backend)` names only what the backend has; model.attention, the dispatcher, calls it at
the first dispatch rather than at import, because asking JAX for its backend initialises it, which
must not happen before a multi-host program has called jax.distributed.initialize.

Each kernel takes the scores' scale (muP's differs from 1/sqrt(Dh)); none takes a soft-cap, which
`attention` refuses for them (and `auto` avoids them for). The kernels know less than `attention`
promises, so each wrapper states what it does with the rest:
- Causal masks in all three kernels are aligned top-left (query i sees keys 0..i), which equals our
  convention (queries are the last T of S positions) only when T == S. Calls with T != S or with
  explicit q_positions (decoding against a KV cache) go, for cuDNN, through an explicit (B, 1, T, S)
  mask (small there: T is the few new tokens), and for Pallas to flash, whose masks are general.
  cuDNN with a mask and an odd T or S (its masked backward rejects those) also goes to flash.
- Segment ids: cuDNN has no segment-id input, so they become a dense (B, 1, T, S) boolean mask
  (exact, but quadratic memory, which is why `auto` prefers flash when segment ids are given).
  Both Pallas kernels take segment ids natively (the GPU one a single array for Q and K/V).
- Both Pallas kernels need equal query and key/value head counts (their index maps pair query
  head h with key/value head h), so GQA/MQA repeat K/V G times along the head axis before the call.
  That copy is O(n) (G * S * K * Dh), never O(n^2); the gradient of the repeat sums the G copies.
- Both Pallas kernels need lengths in whole blocks: Q, K and V are padded to whole blocks and the
  padding given a segment id of its own, so real queries never see padded keys and padded queries
  (dropped afterwards) always see at least one key, which keeps their softmax free of 0/0.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax.extend import backend as jax_backend

from model.flash import round_up, flash_attention
from model.masks import make_mask


def nvidia_compute_capability() -> Optional[tuple[int, int]]:
  """(major, minor) of the first device if the default backend is CUDA, else None."""
  if jax.default_backend() != "gpu":
    return None
  try:
    if "cuda" not in jax_backend.get_backend().platform_version.lower():
      return None  # ROCm
    major, minor = str(jax.devices()[0].compute_capability).split(".")[:2]
    return int(major), int(minor)
  except (AttributeError, ValueError):
    return None


def cudnn_supports(dtype, head_dim: int) -> bool:
  """Whether cuDNN's flash attention takes these inputs on this machine."""
  cc = nvidia_compute_capability()
  if cc is None or cc < (8, 0):
    return False
  max_head_dim = 256 if cc >= (9, 0) else 128
  return jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= max_head_dim


def dot_product_attention(
    q_BxTxHxDh: jax.Array,
    k_BxSxKxDh: jax.Array,
    v_BxSxKxDh: jax.Array,
    *,
    causal: bool = True,
    q_positions_BxT: Optional[jax.Array] = None,
    q_segment_ids_BxT: Optional[jax.Array] = None,
    kv_segment_ids_BxS: Optional[jax.Array] = None,
    implementation: str = "cudnn",
    scale: Optional[float] = None,
) -> jax.Array:
  """`jax.nn.dot_product_attention` with our masks; implementation "xla" lets CPU tests run it.
  scale: the scores' scale, None = 1/sqrt(Dh)."""
  t, dh = q_BxTxHxDh.shape[1], q_BxTxHxDh.shape[3]
  scale = dh ** -0.5 if scale is None else scale
  s = k_BxSxKxDh.shape[1]
  if implementation == "cudnn" and not cudnn_supports(q_BxTxHxDh.dtype, dh):
    raise ValueError(
        f"cudnn attention needs an NVIDIA GPU (SM80+), bfloat16 or float16 inputs and a head dim "
        f"that is a multiple of 8 up to 128 (256 on SM90+); got {jnp.dtype(q_BxTxHxDh.dtype).name}, "
        f"head dim {dh}: use model.attention_impl=flash or auto")
  # The kernel's own causal mask (no mask tensor at all) is right only when queries and keys align.
  kernel_causal = causal and q_positions_BxT is None and t == s
  mask = make_mask(
      t, s, causal=causal and not kernel_causal, q_positions_BxT=q_positions_BxT,
      q_segment_ids_BxT=q_segment_ids_BxT, kv_segment_ids_BxS=kv_segment_ids_BxS)
  if implementation == "cudnn" and mask is not None and (t % 2 or s % 2):
    # cuDNN's backward with a mask (it becomes a bias) rejects odd lengths, and whether a gradient
    # will be taken is unknown here; flash takes the same masks at any length.
    return flash_attention(
        q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, causal=causal, q_positions_BxT=q_positions_BxT,
        q_segment_ids_BxT=q_segment_ids_BxT, kv_segment_ids_BxS=kv_segment_ids_BxS, scale=scale)
  return jax.nn.dot_product_attention(
      q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, mask=None if mask is None else mask[:, None],
      scale=scale, is_causal=kernel_causal, implementation=implementation)


def _pallas_falls_back(t, s, q_positions_BxT, q_segment_ids_BxT, kv_segment_ids_BxS,
                       *, one_segment_array: bool) -> bool:
  """True when the Pallas kernels cannot express the call (see the module docstring)."""
  if t != s or q_positions_BxT is not None:
    return True
  return one_segment_array and q_segment_ids_BxT is not kv_segment_ids_BxS


def _falls_back_to_flash(*, one_segment_array: bool):
  """Turns a Pallas kernel's call, kernel(q, k, v, causal, q_segment_ids_BxT, kv_segment_ids_BxS,
  **options), into an attention function with model.attention's keywords: a call the kernel
  cannot express (_pallas_falls_back) runs flash instead, whose masks are general."""

  def wrap(kernel):
    def attention_fn(q_BxTxHxDh: jax.Array, k_BxSxKxDh: jax.Array, v_BxSxKxDh: jax.Array, *,
                     causal: bool = True, q_positions_BxT: Optional[jax.Array] = None,
                     q_segment_ids_BxT: Optional[jax.Array] = None,
                     kv_segment_ids_BxS: Optional[jax.Array] = None, **options) -> jax.Array:
      if _pallas_falls_back(q_BxTxHxDh.shape[1], k_BxSxKxDh.shape[1], q_positions_BxT,
                            q_segment_ids_BxT, kv_segment_ids_BxS,
                            one_segment_array=one_segment_array):
        return flash_attention(
            q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, causal=causal, q_positions_BxT=q_positions_BxT,
            q_segment_ids_BxT=q_segment_ids_BxT, kv_segment_ids_BxS=kv_segment_ids_BxS,
            scale=options.get("scale"))
      return kernel(q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, causal, q_segment_ids_BxT,
                    kv_segment_ids_BxS, **options)

    attention_fn.__name__, attention_fn.__doc__ = kernel.__name__, kernel.__doc__
    return attention_fn

  return wrap


def _pad_with_segments(x_BxTxNxDh, seg_BxT, length: int, pad_id):
  t = x_BxTxNxDh.shape[1]
  x = jnp.pad(x_BxTxNxDh, ((0, 0), (0, length - t), (0, 0), (0, 0)))
  seg = jnp.pad(seg_BxT, ((0, 0), (0, length - t)), constant_values=pad_id)
  return x, seg


def _padded_segments(q_segment_ids_BxT, kv_segment_ids_BxS, b: int, t: int, s: int):
  """Segment ids for both sides (zeros if none were given) and an id that neither side uses."""
  if q_segment_ids_BxT is None:
    q_seg = jnp.zeros((b, t), jnp.int32)
    return q_seg, q_seg, 1
  q_seg, kv_seg = q_segment_ids_BxT.astype(jnp.int32), kv_segment_ids_BxS.astype(jnp.int32)
  return q_seg, kv_seg, jnp.minimum(q_seg.min(), kv_seg.min()) - 1


def _kernel_inputs(q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, q_segment_ids_BxT, kv_segment_ids_BxS,
                   length: int):
  """What both Pallas kernels take (L = length, whole blocks): (q, k, v) (B, L, H, Dh) each, K/V
  repeated to the H query heads, and the segment ids (B, L) of each side, the padding with an id
  of its own; (None, None) for the segment ids when there are none and nothing was padded."""
  b, t, h, _ = q_BxTxHxDh.shape
  s, kv = k_BxSxKxDh.shape[1], k_BxSxKxDh.shape[2]
  q_seg_BxL = kv_seg_BxL = None
  if length != t or q_segment_ids_BxT is not None:
    q_seg, kv_seg, pad_id = _padded_segments(q_segment_ids_BxT, kv_segment_ids_BxS, b, t, s)
    q_BxTxHxDh, q_seg_BxL = _pad_with_segments(q_BxTxHxDh, q_seg, length, pad_id)
    k_BxSxKxDh, kv_seg_BxL = _pad_with_segments(k_BxSxKxDh, kv_seg, length, pad_id)
    v_BxSxKxDh = jnp.pad(v_BxSxKxDh, ((0, 0), (0, length - s), (0, 0), (0, 0)))
  # The kernels need H == K (see the module docstring).
  k_BxLxHxDh = jnp.repeat(k_BxSxKxDh, h // kv, axis=2)
  v_BxLxHxDh = jnp.repeat(v_BxSxKxDh, h // kv, axis=2)
  return q_BxTxHxDh, k_BxLxHxDh, v_BxLxHxDh, q_seg_BxL, kv_seg_BxL


@_falls_back_to_flash(one_segment_array=True)
def pallas_gpu_attention(q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, causal, q_segment_ids_BxT,
                         kv_segment_ids_BxS, interpret: bool = False,
                         scale: Optional[float] = None) -> jax.Array:
  """The Pallas Triton flash kernel; interpret=True runs it on CPU (tests). scale: None =
  1/sqrt(Dh)."""
  from jax.experimental.pallas.ops.gpu import attention as pallas_gpu

  t, dh = q_BxTxHxDh.shape[1], q_BxTxHxDh.shape[3]
  # The forward kernel tiles by 128 and the backward by 32, each clipped to the length: a length of
  # at most 128 needs a multiple of 32, a longer one a multiple of 128.
  length = round_up(t, 32) if t <= 128 else round_up(t, 128)
  # One segment array for both sides: _pallas_falls_back let only calls with one through.
  q_BxLxHxDh, k_BxLxHxDh, v_BxLxHxDh, segments_BxL, _ = _kernel_inputs(
      q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, q_segment_ids_BxT, kv_segment_ids_BxS, length)
  o_BxLxHxDh = pallas_gpu.mha(
      q_BxLxHxDh, k_BxLxHxDh, v_BxLxHxDh, segments_BxL, sm_scale=dh ** -0.5 if scale is None else scale, causal=causal,
      block_sizes=pallas_gpu.BlockSizes.get_default(), interpret=interpret)
  return o_BxLxHxDh[:, :t]


@_falls_back_to_flash(one_segment_array=False)
def pallas_tpu_attention(q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, causal, q_segment_ids_BxT,
                         kv_segment_ids_BxS, scale: Optional[float] = None) -> jax.Array:
  """The Pallas TPU flash kernel (runs on CPU under pltpu.force_tpu_interpret_mode()). scale:
  None = 1/sqrt(Dh)."""
  from jax.experimental.pallas.ops.tpu import flash_attention as pallas_tpu

  t, dh = q_BxTxHxDh.shape[1], q_BxTxHxDh.shape[3]
  length = round_up(t, 128)  # the kernel's default tiles are 128 along both sequences
  q_BxLxHxDh, k_BxLxHxDh, v_BxLxHxDh, q_seg_BxL, kv_seg_BxL = _kernel_inputs(
      q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, q_segment_ids_BxT, kv_segment_ids_BxS, length)
  segments = None if q_seg_BxL is None else pallas_tpu.SegmentIds(q=q_seg_BxL, kv=kv_seg_BxL)
  to_heads_first = functools.partial(jnp.transpose, axes=(0, 2, 1, 3))
  o_BxHxLxDh = pallas_tpu.flash_attention(
      to_heads_first(q_BxLxHxDh), to_heads_first(k_BxLxHxDh), to_heads_first(v_BxLxHxDh),
      segment_ids=segments, causal=causal,
      sm_scale=dh ** -0.5 if scale is None else scale)
  return to_heads_first(o_BxHxLxDh)[:, :t]


def available(backend: str) -> dict[str, Callable[..., jax.Array]]:
  """Name -> kernel, for the kernels `backend` ("cpu", "gpu", "tpu") can run."""
  if backend == "gpu":
    cc = nvidia_compute_capability()
    cudnn = {"cudnn": dot_product_attention} if cc is not None and cc >= (8, 0) else {}
    return {**cudnn, "pallas": pallas_gpu_attention}
  if backend == "tpu":
    return {"pallas": pallas_tpu_attention}
  return {}
