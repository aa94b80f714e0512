"""Next-token sampling: greedy, temperature, top-k and top-p, with explicit per-row PRNG keys.

Logits are first warped (divided by the temperature, then everything outside the top k and
outside the top-p nucleus set to -inf); a token is then drawn from softmax of the warped logits.
`distribution` returns exactly that softmax, so speculative decoding's p and q are the
distributions the tokens really come from. Temperature 0 is greedy: the distribution is one-hot
on the argmax, which lets speculative decoding run its greedy mode through the same acceptance
rule.

Keys are per row: row b's token depends only on its own key and logits, so a sequence sampled
inside a batch is the sequence sampled alone with the same key.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """temperature 0 = greedy; top_k 0 = off; top_p 1.0 = off. Static (hashable) for jit."""

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if not self.temperature >= 0:
      raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
    if not isinstance(self.top_k, int) or self.top_k < 0:
      raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p!r}")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0


def warp_logits(logits_NxV: jax.Array, cfg: SamplingConfig) -> jax.Array:
  """Float32 logits whose softmax is the sampling distribution (masked entries at -inf).

  Any leading shape works (N stands for all of it). Greedy keeps only the argmax.
  """
  logits = logits_NxV.astype(jnp.float32)
  if cfg.greedy:
    best = jnp.argmax(logits, axis=-1)
    hot = jax.nn.one_hot(best, logits.shape[-1], dtype=jnp.bool_)
    return jnp.where(hot, 0.0, -jnp.inf)
  logits = logits / cfg.temperature
  if 0 < cfg.top_k < logits.shape[-1]:
    kth_Nx1 = jax.lax.top_k(logits, cfg.top_k)[0][..., -1:]
    logits = jnp.where(logits >= kth_Nx1, logits, -jnp.inf)  # ties with the k-th all stay
  if cfg.top_p < 1.0:
    sorted_desc = -jnp.sort(-logits, axis=-1)
    probs_sorted = jax.nn.softmax(sorted_desc, axis=-1)
    mass_before = jnp.cumsum(probs_sorted, axis=-1) - probs_sorted
    # The nucleus is the shortest prefix whose mass reaches top_p: a token is in it when the
    # mass strictly before it is below top_p (so the most likely token always is).
    in_nucleus = mass_before < cfg.top_p
    n_keep_Nx1 = jnp.sum(in_nucleus, axis=-1, keepdims=True)
    threshold_Nx1 = jnp.take_along_axis(sorted_desc, n_keep_Nx1 - 1, axis=-1)
    logits = jnp.where(logits >= threshold_Nx1, logits, -jnp.inf)
  return logits


def distribution(logits_NxV: jax.Array, cfg: SamplingConfig) -> jax.Array:
  """The probabilities (float32, summing to 1 on the last axis) that `sample` draws from."""
  return jax.nn.softmax(warp_logits(logits_NxV, cfg), axis=-1)


def sample(keys_B: jax.Array, logits_BxV: jax.Array, cfg: SamplingConfig) -> jax.Array:
  """One token per row, int32 (B,), row b drawn with keys_B[b]."""
  warped = warp_logits(logits_BxV, cfg)
  if cfg.greedy:
    return jnp.argmax(warped, axis=-1).astype(jnp.int32)
  return jax.vmap(jax.random.categorical)(keys_B, warped).astype(jnp.int32)


def sample_from_probs(keys_B: jax.Array, probs_BxV: jax.Array) -> jax.Array:
  """One token per row from explicit probabilities (zeros are never drawn)."""
  logp = jnp.where(probs_BxV > 0, jnp.log(jnp.maximum(probs_BxV, 1e-38)), -jnp.inf)
  return jax.vmap(jax.random.categorical)(keys_B, logp).astype(jnp.int32)
