"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a small draft model proposes,
the target model verifies gamma + 1 positions in one forward pass.

One round, for every row b of the batch at its own sequence length n_b:
  1. the draft samples d_1..d_gamma autoregressively from q_1..q_gamma, with its own cache;
  2. the target runs [x_{n-1}, d_1, ..., d_gamma] at positions n-1..n-1+gamma in one pass,
     giving p_1..p_{gamma+1};
  3. d_i is accepted with probability min(1, p_i(d_i) / q_i(d_i)), in order, until the first
     rejection; at a rejection at i a token is drawn from norm(max(0, p_i - q_i)); if all gamma
     are accepted, one more token is drawn from p_{gamma+1};
  4. the row advances by (accepted + 1) tokens, and both caches are rolled back to it.
The emitted tokens are distributed exactly as the target's own samples (tests/test_speculative.py
checks it with a chi-square test). With temperature 0 the distributions are one-hot argmaxes, and
the same rule accepts exactly the draft tokens that equal the target's argmax.

Rollback costs nothing: a cache slot past a row's length is masked for every query that could
read it and is overwritten before it is next read (model/kv_cache.py). So a rejection only moves
the row's length n_b back; the stale slots of the rejected tokens stay in memory, unread.

Cache invariant at the start of a round: both caches hold every position < n - 1 (the last token
x_{n-1} is not yet fed). The target's pass writes n-1..n-1+gamma, so it holds the accepted
tokens afterwards. The draft fed only x_{n-1}, d_1..d_{gamma-1}; when all gamma are accepted it
lacks d_gamma. Its first step of each round therefore feeds two tokens, at positions n-2 and n-1:
rewriting a slot that already holds the right token is harmless, and the step costs about what
a one-token step costs (decoding is bound by reading the weights).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from model import generation, kv_cache, sampling, transformer
from model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class SpeculativeSpec:
  """The static shape of one speculative call: gamma draft tokens per round, and the fields of
  generation.DecodeSpec, which checks them."""

  gamma: int
  max_new_tokens: int
  eot_id: int
  sampling: sampling.SamplingConfig = sampling.SamplingConfig()

  def __post_init__(self):
    generation.DecodeSpec(self.max_new_tokens, self.eot_id, self.sampling)
    if self.gamma < 1:
      raise ValueError(f"gamma must be >= 1, got {self.gamma}")


class SpeculativeOutput(NamedTuple):
  """Generated tokens plus per-row counters of the rounds each row took part in.

  rounds_B: target verification passes; emitted_B: tokens produced by those rounds (accepted
  + 1 each, before cutting at max_new_tokens or end-of-text); accepted_B: draft tokens accepted;
  judged_B: draft tokens that met the acceptance test (accepted, plus the rejected one if any).
  """

  tokens_BxN: jax.Array
  lengths_B: jax.Array
  rounds_B: jax.Array
  emitted_B: jax.Array
  accepted_B: jax.Array
  judged_B: jax.Array


def verify(
    key_u_B: jax.Array,
    key_x_B: jax.Array,
    draft_BxG: jax.Array,
    q_BxGxV: jax.Array,
    p_BxG1xV: jax.Array,
) -> tuple[jax.Array, jax.Array]:
  """The acceptance rule and the residual draw: (n_accepted_B in 0..G, next token_B).

  draft_BxG: the draft's tokens; q_BxGxV: the draft distributions they were drawn from;
  p_BxG1xV: the target distributions at the same G positions plus one after them.
  """
  b, g = draft_BxG.shape
  p_at_BxG = jnp.take_along_axis(p_BxG1xV[:, :g], draft_BxG[..., None], axis=-1)[..., 0]
  q_at_BxG = jnp.take_along_axis(q_BxGxV, draft_BxG[..., None], axis=-1)[..., 0]
  # u in (0, 1]: u <= p/q written as u * q <= p, so p(x) = 0 is never accepted (u > 0), p >= q
  # always is, and the draft's q(x) > 0 (it sampled x) keeps the division implicit.
  u_BxG = 1.0 - jax.vmap(lambda k: jax.random.uniform(k, (g,)))(key_u_B)
  accept_BxG = u_BxG * q_at_BxG <= p_at_BxG
  n_acc_B = jnp.sum(jnp.cumprod(accept_BxG.astype(jnp.int32), axis=1), axis=1)

  # The draw after the accepted prefix: residual norm(max(0, p - q)) at the first rejection, or
  # p_{G+1} when all G were accepted. Padding q with a zero row at index G makes both one
  # formula: max(0, p_{G+1} - 0) = p_{G+1}.
  q_pad_BxG1xV = jnp.concatenate([q_BxGxV, jnp.zeros_like(q_BxGxV[:, :1])], axis=1)
  idx_Bx1x1 = n_acc_B[:, None, None]
  p_BxV = jnp.take_along_axis(p_BxG1xV, idx_Bx1x1, axis=1)[:, 0]
  q_BxV = jnp.take_along_axis(q_pad_BxG1xV, idx_Bx1x1, axis=1)[:, 0]
  residual_BxV = jnp.maximum(p_BxV - q_BxV, 0.0)
  mass_Bx1 = jnp.sum(residual_BxV, axis=-1, keepdims=True)
  # A rejection implies q(x) > p(x) somewhere, so mass > 0 in exact arithmetic; if rounding
  # leaves it at 0, p itself is the limit of the residual's direction we can still sample.
  residual_BxV = jnp.where(mass_Bx1 > 0, residual_BxV / jnp.maximum(mass_Bx1, 1e-30), p_BxV)
  x_B = sampling.sample_from_probs(key_x_B, residual_BxV)
  return n_acc_B, x_B


def _round_keys(keys_B: jax.Array, round_i: jax.Array, n: int) -> jax.Array:
  """(n, B) keys for one round: a function of (row key, round, use) only."""
  per_round = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_B, round_i)
  return jax.vmap(lambda k: jax.random.split(k, n), out_axes=1)(per_round)


def make_generate(
    target_cfg: ModelConfig,
    target_graphdef: nnx.GraphDef,
    draft_cfg: ModelConfig,
    draft_graphdef: nnx.GraphDef,
    spec: SpeculativeSpec,
) -> Callable[..., SpeculativeOutput]:
  """A jitted generate(target_params, draft_params, prompts_BxT, prompt_lengths_B, keys_B).

  The prompts are right-padded (model/generation.pad_prompts). Each cache holds
  T + max_new_tokens + gamma + 1 slots: the last round may score up to gamma positions past the
  last token kept.
  """
  if target_cfg.vocab_size != draft_cfg.vocab_size:
    raise ValueError(
        f"target and draft vocabularies differ ({target_cfg.vocab_size} vs "
        f"{draft_cfg.vocab_size}); speculative decoding needs one shared tokenizer")
  g, n_new, sc = spec.gamma, spec.max_new_tokens, spec.sampling

  def generate(target_params, draft_params, prompts_BxT, prompt_lengths_B, keys_B):
    b, t = prompts_BxT.shape
    s = t + n_new + g + 1  # room for the last round's overshoot past max_new_tokens
    rows_B = jnp.arange(b)
    buf_BxS = jnp.zeros((b, s), jnp.int32).at[:, :t].set(prompts_BxT)
    prompt_lengths_B = prompt_lengths_B.astype(jnp.int32)
    # Prefill both caches with the prompt; its logits are not needed (round 1 feeds x_{n-1}).
    pos_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[None], (b, t))
    _, cache_t = transformer.decode(
        target_graphdef, target_params, prompts_BxT, pos_BxT, kv_cache.init(target_cfg, b, s))
    _, cache_d = transformer.decode(
        draft_graphdef, draft_params, prompts_BxT, pos_BxT, kv_cache.init(draft_cfg, b, s))
    zeros_B = jnp.zeros((b,), jnp.int32)
    state = dict(buf=buf_BxS, n=prompt_lengths_B, cache_t=cache_t, cache_d=cache_d,
                 done=jnp.zeros((b,), bool), round=jnp.int32(0), rounds=zeros_B,
                 emitted=zeros_B, accepted=zeros_B, judged=zeros_B)

    def draft_propose(cache_d, buf_BxS, n_B, keys_GxB):
      """gamma draft tokens and the distributions they came from."""
      # Positions n-2 and n-1; with n = 1, positions 0 and 1, the second holding a padding
      # token whose slot is overwritten by d_1 before anything reads it.
      first_B = jnp.maximum(n_B - 2, 0)
      pos2_Bx2 = first_B[:, None] + jnp.arange(2, dtype=jnp.int32)[None]
      tok2_Bx2 = jnp.take_along_axis(buf_BxS, pos2_Bx2, axis=1)
      logits_Bx2xV, cache_d = transformer.decode(
          draft_graphdef, draft_params, tok2_Bx2, pos2_Bx2, cache_d)
      last_Bx1x1 = (n_B - 1 - first_B)[:, None, None]
      logits_BxV = jnp.take_along_axis(logits_Bx2xV, last_Bx1x1, axis=1)[:, 0]

      def step(carry, key_i_B):
        cache_d, logits_BxV, pos_B = carry
        q_BxV = sampling.distribution(logits_BxV, sc)
        d_B = sampling.sample(key_i_B, logits_BxV, sc)
        logits_Bx1xV, cache_d = transformer.decode(
            draft_graphdef, draft_params, d_B[:, None], pos_B[:, None], cache_d)
        return (cache_d, logits_Bx1xV[:, 0], pos_B + 1), (d_B, q_BxV)

      # The last draft token is not fed here: the next round's two-token step covers it.
      (cache_d, logits_BxV, _), (d_GxB, q_GxBxV) = jax.lax.scan(
          step, (cache_d, logits_BxV, n_B), keys_GxB[:g - 1])
      q_BxV = sampling.distribution(logits_BxV, sc)
      d_B = sampling.sample(keys_GxB[g - 1], logits_BxV, sc)
      draft_BxG = jnp.concatenate([d_GxB.T, d_B[:, None]], axis=1)
      q_BxGxV = jnp.concatenate([jnp.swapaxes(q_GxBxV, 0, 1), q_BxV[:, None]], axis=1)
      return draft_BxG, q_BxGxV, cache_d

    def cond(st):
      return ~jnp.all(st["done"])

    def body(st):
      buf_BxS, n_B, done_B = st["buf"], st["n"], st["done"]
      keys = _round_keys(keys_B, st["round"], g + 2)
      draft_BxG, q_BxGxV, cache_d = draft_propose(st["cache_d"], buf_BxS, n_B, keys[:g])

      last_Bx1 = jnp.take_along_axis(buf_BxS, (n_B - 1)[:, None], axis=1)
      chunk_BxG1 = jnp.concatenate([last_Bx1, draft_BxG], axis=1)
      pos_BxG1 = (n_B - 1)[:, None] + jnp.arange(g + 1, dtype=jnp.int32)[None]
      logits_BxG1xV, cache_t = transformer.decode(
          target_graphdef, target_params, chunk_BxG1, pos_BxG1, st["cache_t"])
      p_BxG1xV = sampling.distribution(logits_BxG1xV, sc)
      n_acc_B, x_B = verify(keys[g], keys[g + 1], draft_BxG, q_BxGxV, p_BxG1xV)

      # Emitted: d_1..d_{n_acc}, then x; cut at the first end-of-text and at max_new_tokens.
      j_G1 = jnp.arange(g + 1, dtype=jnp.int32)
      new_BxG1 = jnp.concatenate([draft_BxG, jnp.zeros_like(draft_BxG[:, :1])], axis=1)
      new_BxG1 = jnp.where(j_G1[None] == n_acc_B[:, None], x_B[:, None], new_BxG1)
      valid_BxG1 = (j_G1[None] <= n_acc_B[:, None]) & ~done_B[:, None]
      is_eot_BxG1 = valid_BxG1 & (new_BxG1 == spec.eot_id)
      first_eot_B = jnp.where(jnp.any(is_eot_BxG1, axis=1), jnp.argmax(is_eot_BxG1, axis=1), g + 1)
      room_B = prompt_lengths_B + n_new - n_B
      advance_B = jnp.minimum(jnp.minimum(n_acc_B + 1, first_eot_B + 1), room_B)
      advance_B = jnp.where(done_B, 0, advance_B)
      write_BxG1 = jnp.where(j_G1[None] < advance_B[:, None], n_B[:, None] + j_G1[None], s)
      buf_BxS = buf_BxS.at[rows_B[:, None], write_BxG1].set(new_BxG1, mode="drop")

      # Rollback is this line: the new length; slots beyond it are stale and masked.
      n_next_B = n_B + advance_B
      active_B = (~done_B).astype(jnp.int32)
      done_next_B = done_B | (first_eot_B <= n_acc_B) | (n_next_B >= prompt_lengths_B + n_new)
      return dict(
          buf=buf_BxS, n=n_next_B, cache_t=cache_t, cache_d=cache_d, done=done_next_B,
          round=st["round"] + 1, rounds=st["rounds"] + active_B,
          emitted=st["emitted"] + active_B * (n_acc_B + 1),
          accepted=st["accepted"] + active_B * n_acc_B,
          judged=st["judged"] + active_B * jnp.minimum(n_acc_B + 1, g))

    st = jax.lax.while_loop(cond, body, state)
    idx_BxN = prompt_lengths_B[:, None] + jnp.arange(n_new, dtype=jnp.int32)[None]
    lengths_B = st["n"] - prompt_lengths_B
    tokens_BxN = jnp.take_along_axis(st["buf"], idx_BxN, axis=1)
    tokens_BxN = jnp.where(jnp.arange(n_new)[None] < lengths_B[:, None], tokens_BxN, spec.eot_id)
    return SpeculativeOutput(tokens_BxN, lengths_B, st["rounds"], st["emitted"], st["accepted"],
                             st["judged"])

  return jax.jit(generate)


def expected_tokens_per_call(alpha: float, gamma: int) -> float:
  """(1 - alpha^(gamma+1)) / (1 - alpha): the mean tokens per target pass if every draft token
  is accepted independently with probability alpha."""
  if alpha >= 1.0:
    return float(gamma + 1)
  return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def acceptance_rate(out: SpeculativeOutput) -> float:
  """alpha estimated as accepted / judged over all rows: the maximum-likelihood estimate when each
  draft token is accepted independently with probability alpha (rounds stop at a rejection)."""
  judged = int(jnp.sum(out.judged_B))
  return float(jnp.sum(out.accepted_B)) / judged if judged else float("nan")


def tokens_per_call(out: SpeculativeOutput) -> float:
  rounds = int(jnp.sum(out.rounds_B))
  return float(jnp.sum(out.emitted_B)) / rounds if rounds else float("nan")
