"""Decode speed: timed greedy generation with and without a KV cache, decode steps from a filled
cache, and cached passes over a few tokens (a speculative verification).

Nothing here imports grain, ml_collections or tokenizers: experiments.accelerator runs these on
randomly initialised models where only jax, flax, optax, orbax and absl are installed. The
measurements on trained runs (experiments.decode_bench) are train/studies/decode_runs.py.
Timings are the best of `repeats` runs of an already compiled function.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from model import generation, kv_cache, sampling, transformer
from model.config import ModelConfig
from train.studies.bench_timing import best_time


def random_decode_model(d: dict, float32: bool, **overrides):
  """(cfg, graphdef, params): a randomly initialised model in decoding's (unstacked) layout, in
  float32 or else bfloat16. d: d_model, n_layers, n_heads, n_kv_heads, d_ff, vocab, and the
  context and steps it must hold; overrides replace any of the five dims."""
  dims = {k: d[k] for k in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff")}
  dims.update(overrides)
  cfg = ModelConfig(
      vocab_size=d["vocab"], max_seq_len=d["context"] + d["steps"] + 1,
      dtype="float32" if float32 else "bfloat16", param_dtype="float32" if float32 else "bfloat16",
      scan_layers=False, attention_impl="reference", **dims)
  graphdef, params = transformer.create(cfg, jax.random.key(0))
  return cfg, graphdef, params


def generate_timed(cfg, graphdef, params, prompt: list[int], n_new: int, repeats: int):
  """(tokens, best seconds) of greedy cached generation of exactly n_new tokens at batch 1."""
  spec = generation.DecodeSpec(n_new, eot_id=-1, sampling=sampling.SamplingConfig(temperature=0.0))
  fn = generation.make_generate(cfg, graphdef, spec)
  args = (params, *generation.pad_prompts([prompt], 0), jax.random.split(jax.random.key(0), 1))
  out = jax.block_until_ready(fn(*args))  # compiles
  seconds = best_time(lambda: jax.block_until_ready(fn(*args)), repeats)
  return generation.trim(out)[0], seconds


def generate_uncached(graphdef, params, prompt: list[int], n_new: int,
                      repeats: int) -> tuple[list[int], float]:
  """Greedy decoding without a cache: a full forward pass over the prefix for every token.

  The prefix is padded to a multiple of 32 (causal attention keeps the padding out of the
  logits read), so only a handful of widths are compiled; they are compiled before timing.
  """
  width = lambda n: -(-n // 32) * 32
  forward = jax.jit(
      lambda p, t, i: jnp.argmax(transformer.apply(graphdef, p, t)[0, i - 1]).astype(jnp.int32))
  total = len(prompt) + n_new
  for w in sorted({width(n) for n in range(len(prompt), total)}):
    forward(params, jnp.zeros((1, w), jnp.int32), 1).block_until_ready()
  buf = np.zeros((1, width(total)), np.int32)

  def run():
    buf[0, :len(prompt)] = prompt
    for n in range(len(prompt), total):
      buf[0, n] = int(forward(params, jnp.asarray(buf[:, :width(n)]), n))

  seconds = best_time(run, repeats)
  return buf[0, len(prompt):total].tolist(), seconds


def make_decode_steps(cfg, graphdef):
  """jit(params, cache, tok_B, pos_B, n) -> tok_B: n greedy decode steps from a given cache."""

  def run(params, cache, tok_B, pos_B, n):
    def body(i, carry):
      cache, tok_B = carry
      logits_Bx1xV, cache = transformer.decode(
          graphdef, params, tok_B[:, None], (pos_B + i)[:, None], cache)
      return cache, jnp.argmax(logits_Bx1xV[:, 0], axis=-1).astype(jnp.int32)

    return jax.lax.fori_loop(0, n, body, (cache, tok_B))[1]

  return jax.jit(run)


def step_seconds(cfg, graphdef, params, batch: int, context: int, steps: int,
                 repeats: int) -> tuple[float, int]:
  """(seconds per decode step at `context` filled slots, from (t(1 + steps) - t(1)) / steps,
  bytes of the cache allocated)."""
  cache = kv_cache.init(cfg, batch, context + steps + 1)
  leaves, treedef = jax.tree.flatten(cache)
  keys = jax.random.split(jax.random.key(0), len(leaves))
  cache = jax.tree.unflatten(
      treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])
  tok_B = jnp.zeros((batch,), jnp.int32)
  pos_B = jnp.full((batch,), context, jnp.int32)
  fn = make_decode_steps(cfg, graphdef)
  run = lambda n: jax.block_until_ready(fn(params, cache, tok_B, pos_B, n))
  run(1)
  t_one = best_time(lambda: run(1), repeats)
  t_many = best_time(lambda: run(1 + steps), repeats)
  return (t_many - t_one) / steps, cache.nbytes


def pass_seconds(cfg, graphdef, params, t: int, passes: int, repeats: int) -> float:
  """Seconds of one cached forward pass over t new tokens at batch 1 (a verification of
  gamma = t - 1 draft tokens), from (t(1 + passes) - t(1)) / passes."""

  def run(params, cache, n):
    def body(i, carry):
      cache, tok = carry
      pos_1xT = (16 + i * t + jnp.arange(t, dtype=jnp.int32))[None]
      logits_1xTxV, cache = transformer.decode(
          graphdef, params, jnp.broadcast_to(tok, (1, t)), pos_1xT, cache)
      return cache, jnp.argmax(logits_1xTxV[0, -1]).astype(jnp.int32)

    return jax.lax.fori_loop(0, n, body, (cache, jnp.int32(0)))[1]

  fn = jax.jit(run)
  cache = kv_cache.init(cfg, 1, 16 + (passes + 1) * t)
  go = lambda n: jax.block_until_ready(fn(params, cache, n))
  go(1)
  whole = best_time(lambda: go(1 + passes), repeats)
  per_pass = (whole - best_time(lambda: go(1), repeats)) / passes
  # On a loaded machine with few passes (--smoke) the difference can drown in noise and come out
  # zero or negative; then the whole call per pass, an overestimate by its fixed cost.
  return per_pass if per_pass > 0 else whole / (1 + passes)
