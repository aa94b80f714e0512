"""KV cache, prefill and the decode loop: exact against the full forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import generation, kv_cache, sampling, transformer
from model.config import ModelConfig


def small_cfg(**kw) -> ModelConfig:
  # init_std 0.2 spreads the logits, so greedy choices are not decided by rounding.
  base = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
              max_seq_len=64, init_std=0.2)
  base.update(kw)
  return ModelConfig(**base)


# Sliding window 4 < the 12 tokens (the cache must mask what the window drops), with QK-norm and
# yarn-scaled RoPE on the same path.
VARIANTS = dict(sliding_window=4, qk_norm=True,
                rope_scaling=dict(kind="yarn", factor=4.0, original_max_seq_len=8))
# Latent attention decodes by absorbed matrices over cached latents (model/mla.py), a different
# computation from the training forward's explicit keys and values: equal logits check the
# absorption (a W_uk or W_uv used untransposed, RoPE on the wrong dims, a wrong score scale).
MLA = dict(kv_lora_rank=12, qk_rope_head_dim=4, sliding_window=6)


@pytest.mark.parametrize("n_kv_heads,scan,variants",
                         [(4, True, {}), (2, True, {}), (1, True, {}), (2, False, {}),
                          (2, True, VARIANTS), (4, True, MLA),
                          (2, False, dict(sliding_window=3, global_every=2))],
                         ids=["mha", "gqa", "mqa", "gqa-noscan", "window-qknorm-yarn", "mla-window",
                              "local-global"])
def test_prefill_plus_decode_steps_match_full_forward(n_kv_heads, scan, variants):
  cfg = small_cfg(n_kv_heads=n_kv_heads, scan_layers=scan, **variants)
  graphdef, params = transformer.create(cfg, jax.random.key(0))
  tokens_BxT = jax.random.randint(jax.random.key(1), (2, 12), 0, cfg.vocab_size)
  full_BxTxV = jax.jit(lambda p, t: transformer.apply(graphdef, p, t))(params, tokens_BxT)

  n_prompt = 5
  cache = kv_cache.init(cfg, 2, 16)
  pos = jnp.broadcast_to(jnp.arange(n_prompt)[None], (2, n_prompt))
  step = jax.jit(lambda p, t, q, c: transformer.decode(graphdef, p, t, q, c))
  logits, cache = step(params, tokens_BxT[:, :n_prompt], pos, cache)
  pieces = [logits]
  for i in range(n_prompt, 12):
    pos_Bx1 = jnp.full((2, 1), i, jnp.int32)
    logits, cache = step(params, tokens_BxT[:, i:i + 1], pos_Bx1, cache)
    pieces.append(logits)
  cached_BxTxV = jnp.concatenate(pieces, axis=1)
  np.testing.assert_allclose(cached_BxTxV, full_BxTxV, atol=1e-5, rtol=0)


def test_sliding_window_ring_cache_matches_full_forward_and_stays_constant():
  """A window of 4 decoded through a ring of 2 * 4 = 8 slots for 12 tokens, the 5-token
  prompt prefilled 4 tokens at a time: the logits of the full forward pass. Catches a slot not
  taken modulo the ring, a slot read as the wrong position, and a ring too small for a chunk; the
  ring's size grows neither with the prompt nor with the tokens generated."""
  cfg = small_cfg(sliding_window=4)
  graphdef, params = transformer.create(cfg, jax.random.key(0))
  tokens_BxT = jax.random.randint(jax.random.key(1), (2, 12), 0, cfg.vocab_size)
  full_BxTxV = transformer.apply(graphdef, params, tokens_BxT)
  n_prompt = 5
  cache = kv_cache.init(cfg, 2, generation.cache_length(n_prompt, 7), ring=True)
  assert cache.max_len == 8 == kv_cache.init(cfg, 2, generation.cache_length(500, 1000), ring=True).max_len
  step = jax.jit(lambda p, t, q, c: transformer.decode(graphdef, p, t, q, c))
  pieces = []
  for start, n in ((0, 4), (4, 1)):  # prefill's chunks of the window
    pos = jnp.broadcast_to(jnp.arange(start, start + n)[None], (2, n))
    logits, cache = step(params, tokens_BxT[:, start:start + n], pos, cache)
    pieces.append(logits)
  for i in range(n_prompt, 12):
    logits, cache = step(params, tokens_BxT[:, i:i + 1], jnp.full((2, 1), i, jnp.int32), cache)
    pieces.append(logits)
  np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full_BxTxV, atol=1e-5, rtol=0)


def test_rows_at_different_positions_match_their_own_forward():
  cfg = small_cfg()
  graphdef, params = transformer.create(cfg, jax.random.key(0))
  tokens_BxT = jax.random.randint(jax.random.key(2), (2, 9), 0, cfg.vocab_size)
  lengths = jnp.array([3, 7])
  next_Bx1 = jnp.stack([tokens_BxT[0, 3], tokens_BxT[1, 7]])[:, None]

  @jax.jit
  def run(params):
    full_BxTxV = transformer.apply(graphdef, params, tokens_BxT)
    cache = kv_cache.init(cfg, 2, 12)
    _, cache = generation.prefill(graphdef, params, tokens_BxT[:, :8], lengths, cache)
    # Row 0 continues from position 3, row 1 from 7: row 0's padding slots get overwritten.
    logits_Bx1xV, _ = transformer.decode(graphdef, params, next_Bx1, lengths[:, None], cache)
    return full_BxTxV, logits_Bx1xV

  full_BxTxV, logits_Bx1xV = run(params)
  np.testing.assert_allclose(logits_Bx1xV[0, 0], full_BxTxV[0, 3], atol=1e-5, rtol=0)
  np.testing.assert_allclose(logits_Bx1xV[1, 0], full_BxTxV[1, 7], atol=1e-5, rtol=0)


def test_cache_bytes_follow_the_formula_and_shrink_by_heads_over_kv_heads():
  mha, mqa = small_cfg(n_kv_heads=4), small_cfg(n_kv_heads=1)
  cache = kv_cache.init(mha, 3, 20)
  assert cache.nbytes == 3 * kv_cache.bytes_per_sequence(mha, 20)
  assert kv_cache.bytes_per_sequence(mha, 20) == 2 * 2 * 4 * 8 * 20 * 4
  assert kv_cache.bytes_per_sequence(mha, 20) == 4 * kv_cache.bytes_per_sequence(mqa, 20)
  mla = small_cfg(n_kv_heads=4, kv_lora_rank=12, qk_rope_head_dim=4)  # (12 + 4) per token and layer
  assert kv_cache.init(mla, 3, 20).nbytes == 3 * kv_cache.bytes_per_sequence(mla, 20)
  assert kv_cache.bytes_per_sequence(mla, 20) == 2 * (12 + 4) * 20 * 4


def test_cache_writes_each_row_at_its_own_slots():
  b, t, kv, dh, s = 2, 2, 3, 4, 6
  new_BxTxKxDh = jax.random.normal(jax.random.key(0), (b, t, kv, dh))
  start_B = jnp.array([1, 3])
  keys = kv_cache.write_keys(jnp.zeros((b * kv, dh, s)), new_BxTxKxDh, start_B)
  values = kv_cache.write_values(jnp.zeros((b * kv, s, dh)), new_BxTxKxDh, start_B)
  expected_BxKxSxDh = np.zeros((b, kv, s, dh), np.float32)
  for row, first in enumerate([1, 3]):
    expected_BxKxSxDh[row, :, first:first + t] = np.swapaxes(new_BxTxKxDh[row], 0, 1)
  np.testing.assert_array_equal(values.reshape(b, kv, s, dh), expected_BxKxSxDh)
  np.testing.assert_array_equal(keys.reshape(b, kv, dh, s), np.swapaxes(expected_BxKxSxDh, 2, 3))


def greedy_reference(graphdef, params, prompt, n_new):
  """Token-by-token greedy decoding with the full forward pass and no cache.

  The sequence lives in a fixed buffer (one compile): causal attention makes the logits at
  position i independent of the padding after it.
  """
  buf = np.zeros((1, len(prompt) + n_new), np.int32)
  buf[0, :len(prompt)] = prompt
  forward = jax.jit(lambda p, t: transformer.apply(graphdef, p, t))
  for i in range(len(prompt), len(prompt) + n_new):
    buf[0, i] = int(jnp.argmax(forward(params, jnp.asarray(buf))[0, i - 1]))
  return buf[0, len(prompt):].tolist()


@pytest.mark.parametrize("variant", [{}, dict(sliding_window=3),
                                     dict(sliding_window=3, global_every=2, scan_layers=False)],
                         ids=["full", "window-ring", "local-global"])
def test_greedy_generation_matches_uncached_greedy(variant):
  """window 3: a 7-token prompt prefilled 3 at a time into a ring of 6 slots, 8 tokens decoded
  (catches a prompt chunk that wraps past the ring's end); local-global: layer 0 windowed with
  its ring, layer 1 global with every slot."""
  cfg = small_cfg(**variant)
  window = cfg.sliding_window
  graphdef, params = transformer.create(cfg, jax.random.key(0))
  spec = generation.DecodeSpec(max_new_tokens=8, eot_id=cfg.vocab_size - 1,
                           sampling=sampling.SamplingConfig(temperature=0.0))
  prompt = [5, 9, 2, 7, 1, 3, 8] if window else [5, 9, 2]
  prompts, lengths = generation.pad_prompts([prompt], pad_id=0)
  out = generation.make_generate(cfg, graphdef, spec)(params, prompts, lengths, jax.random.split(jax.random.key(0), 1))
  expected = greedy_reference(graphdef, params, prompt, 8)
  got = generation.trim(out)[0]
  assert got == expected[:len(got)]
  assert len(got) == 8 or got[-1] == spec.eot_id


def test_batch_of_different_lengths_equals_each_prompt_alone():
  # Sampled, so that per-row keys are checked too; greedy batching is covered by the speculative
  # test, which compares batched greedy decoding with batched speculative decoding.
  cfg = small_cfg()
  graphdef, params = transformer.create(cfg, jax.random.key(0))
  spec = generation.DecodeSpec(max_new_tokens=10, eot_id=cfg.vocab_size - 1,
                           sampling=sampling.SamplingConfig(temperature=1.0))
  generate = generation.make_generate(cfg, graphdef, spec)
  prompts = [[3, 1, 4, 1, 5, 9], [2], [6, 5, 3]]
  keys = jax.random.split(jax.random.key(7), 3)
  batch = generation.trim(generate(params, *generation.pad_prompts(prompts, 0), keys))
  for i, p in enumerate(prompts):
    # Alone: a batch of one, padded to the same width so that it reuses one compilation.
    alone_1xT = generation.pad_prompts([p + [0] * (6 - len(p))], 0)[0]
    alone = generate(params, alone_1xT, jnp.array([len(p)]), keys[i:i + 1])
    assert batch[i] == generation.trim(alone)[0]


def test_same_seed_same_output_other_seed_other_output():
  cfg = small_cfg()
  graphdef, params = transformer.create(cfg, jax.random.key(0))
  spec = generation.DecodeSpec(max_new_tokens=12, eot_id=cfg.vocab_size - 1,
                           sampling=sampling.SamplingConfig(temperature=1.0, top_k=20, top_p=0.9))
  generate = generation.make_generate(cfg, graphdef, spec)
  prompts, lengths = generation.pad_prompts([[1, 2, 3]] * 2, 0)
  run = lambda seed: generation.trim(generate(params, prompts, lengths, jax.random.split(jax.random.key(seed), 2)))
  assert run(0) == run(0)
  assert run(0) != run(1)


def test_generation_stops_at_end_of_text():
  cfg = small_cfg()
  graphdef, params = transformer.create(cfg, jax.random.key(0))
  greedy = sampling.SamplingConfig(temperature=0.0)
  prompts, lengths = generation.pad_prompts([[4, 4, 8]], 0)
  keys = jax.random.split(jax.random.key(0), 1)
  free = generation.make_generate(cfg, graphdef, generation.DecodeSpec(8, eot_id=-1, sampling=greedy))
  tokens = generation.trim(free(params, prompts, lengths, keys))[0]
  eot = tokens[3]  # pretend the 4th greedy token is end-of-text
  stop = generation.make_generate(cfg, graphdef, generation.DecodeSpec(8, eot_id=eot, sampling=greedy))
  stopped = generation.trim(stop(params, prompts, lengths, keys))[0]
  assert stopped == tokens[:tokens.index(eot) + 1]


def test_unstacked_layers_give_the_same_logits():
  cfg = small_cfg()
  graphdef, params = transformer.create(cfg, jax.random.key(0))
  flat_cfg, flat_graphdef, flat_params = transformer.unstack_layers(cfg, params)
  assert not flat_cfg.scan_layers
  tokens_BxT = jax.random.randint(jax.random.key(1), (2, 7), 0, cfg.vocab_size)
  forward = lambda g: jax.jit(lambda p, t: transformer.apply(g, p, t))
  np.testing.assert_allclose(forward(flat_graphdef)(flat_params, tokens_BxT),
                             forward(graphdef)(params, tokens_BxT), atol=1e-6, rtol=0)
