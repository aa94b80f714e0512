"""Rotary position embedding (RoPE) and the frequency scalings that stretch its context.

RoPE rotates each pair of a head's dimensions by an angle position * inv_freq[i], with
inv_freq[i] = theta^(-2i / Dh): q.k then depends on the two positions only through their
difference. Pairs are laid out half-split (dimension i pairs with i + Dh/2), the layout of
Hugging Face's Llama (rotate_half), so converted checkpoints need no permutation.

A model trained at context C_0 sees, past C_0, angles its low-frequency pairs never saw. Two
published remedies rescale inv_freq once, before any position is seen:
  llama3  (Llama 3.1): pairs whose wavelength 2 pi / inv_freq is longer than C_0 / low_freq_factor
          are slowed by `factor` (interpolated), pairs shorter than C_0 / high_freq_factor are
          kept (they already turn many times within C_0), and the band in between is blended
          linearly in C_0 / wavelength.
  yarn    (Peng et al. 2023, "YaRN"): the blend is a linear ramp over the pair index between the
          pairs that turn beta_fast and beta_slow times within C_0; and the rotated q and k are
          multiplied by attention_factor (0.1 ln(factor) + 1 unless given), which sharpens the
          softmax that the longer context flattens.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from model import fields

ROPE_SCALINGS = ("none", "llama3", "yarn")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """model.rope_scaling: kind none | llama3 | yarn, and the published parameters of each."""

  kind: str = "none"
  factor: float = 1.0  # how many times the original context is stretched
  original_max_seq_len: int = 0  # C_0, the context the model was first trained at
  low_freq_factor: float = 1.0  # llama3
  high_freq_factor: float = 4.0  # llama3
  beta_fast: float = 32.0  # yarn: pairs turning more than this often within C_0 are kept
  beta_slow: float = 1.0  # yarn: pairs turning less than this often are interpolated
  attention_factor: float = 0.0  # yarn: 0 = 0.1 ln(factor) + 1

  def __post_init__(self):
    if self.kind not in ROPE_SCALINGS:
      raise ValueError(
          f"model.rope_scaling.kind={self.kind!r} is unknown; allowed: {', '.join(ROPE_SCALINGS)}")
    if self.kind == "none":
      return
    if not self.factor >= 1.0:
      raise ValueError(f"model.rope_scaling.factor={self.factor} must be >= 1")
    if not (isinstance(self.original_max_seq_len, int) and self.original_max_seq_len > 0):
      raise ValueError(
          f"model.rope_scaling.original_max_seq_len={self.original_max_seq_len!r} must be the "
          "positive context the model was trained at")
    if self.kind == "llama3" and not 0 < self.low_freq_factor < self.high_freq_factor:
      raise ValueError(
          f"model.rope_scaling: need 0 < low_freq_factor ({self.low_freq_factor}) < "
          f"high_freq_factor ({self.high_freq_factor})")
    if self.kind == "yarn" and not (self.beta_fast > self.beta_slow > 0 and self.attention_factor >= 0):
      raise ValueError(
          f"model.rope_scaling: need beta_fast ({self.beta_fast}) > beta_slow ({self.beta_slow}) "
          f"> 0 and attention_factor ({self.attention_factor}) >= 0")

  @property
  def enabled(self) -> bool:
    return self.kind != "none"

  @classmethod
  def from_dict(cls, d: dict) -> "RopeScaling":
    return fields.from_dict(cls, d, "model.rope_scaling")


def _llama3(inv_freq_F: np.ndarray, s: RopeScaling) -> np.ndarray:
  wavelength_F = 2 * math.pi / inv_freq_F
  c0 = s.original_max_seq_len
  # smooth = 0 at wavelength C_0 / low_freq_factor (fully interpolated), 1 at C_0 / high_freq_factor
  smooth_F = (c0 / wavelength_F - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
  smooth_F = np.clip(smooth_F, 0.0, 1.0)
  return (1 - smooth_F) * inv_freq_F / s.factor + smooth_F * inv_freq_F


def _yarn(inv_freq_F: np.ndarray, s: RopeScaling, theta: float, dh: int) -> np.ndarray:
  def pair_turning(n_turns: float) -> float:
    """The (fractional) pair index whose angle turns n_turns full circles within C_0."""
    return dh * math.log(s.original_max_seq_len / (n_turns * 2 * math.pi)) / (2 * math.log(theta))

  # Pairs below `lo` turn often (kept as they are); above `hi` rarely (interpolated by factor).
  lo = max(math.floor(pair_turning(s.beta_fast)), 0)
  hi = min(math.ceil(pair_turning(s.beta_slow)), dh - 1)
  if lo == hi:
    hi += 1e-3
  ramp_F = np.clip((np.arange(dh // 2) - lo) / (hi - lo), 0.0, 1.0)
  return (1 - ramp_F) * inv_freq_F + ramp_F * inv_freq_F / s.factor


def inv_frequencies(dh: int, theta: float, scaling: Optional[RopeScaling] = None) -> np.ndarray:
  """(Dh/2,) float32 angular frequencies of the rotated pairs, scaled as `scaling` says."""
  inv_freq_F = theta ** (-np.arange(0, dh // 2, dtype=np.float64) * 2.0 / dh)
  if scaling is not None and scaling.kind == "llama3":
    inv_freq_F = _llama3(inv_freq_F, scaling)
  elif scaling is not None and scaling.kind == "yarn":
    inv_freq_F = _yarn(inv_freq_F, scaling, theta, dh)
  return inv_freq_F.astype(np.float32)


def attention_factor(scaling: Optional[RopeScaling]) -> float:
  """What the rotated q and k are multiplied by: 1, or YaRN's softmax sharpening."""
  if scaling is None or scaling.kind != "yarn":
    return 1.0
  if scaling.attention_factor:
    return scaling.attention_factor
  return 0.1 * math.log(scaling.factor) + 1.0 if scaling.factor > 1 else 1.0


def rope(x_BxTxNxDh: jax.Array, positions_BxT: jax.Array, theta: float,
         scaling: Optional[RopeScaling] = None) -> jax.Array:
  """x with each pair (i, i + Dh/2) of every head rotated by position * inv_freq[i]."""
  dh = x_BxTxNxDh.shape[-1]
  inv_freq_F = jnp.asarray(inv_frequencies(dh, theta, scaling))
  angles_BxTxF = positions_BxT.astype(jnp.float32)[..., None] * inv_freq_F
  mscale = attention_factor(scaling)
  cos = (jnp.cos(angles_BxTxF) * mscale)[:, :, None, :]
  sin = (jnp.sin(angles_BxTxF) * mscale)[:, :, None, :]
  x = x_BxTxNxDh.astype(jnp.float32)
  x1, x2 = x[..., : dh // 2], x[..., dh // 2:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxNxDh.dtype)
