"""Speculative decoding: exact in greedy mode, distribution-preserving when sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from model import generation, sampling, speculative, transformer
from model.config import ModelConfig


def cfg_of(**kw) -> ModelConfig:
  base = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
              max_seq_len=64, init_std=0.2)
  base.update(kw)
  return ModelConfig(**base)


def noisy_copy(params, key, scale):
  """The target's parameters plus noise: a draft that agrees with it often, not always."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(
      treedef, [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def test_verify_greedy_accepts_exactly_the_matching_prefix():
  v = 5
  p_argmax = jnp.array([[1, 2, 3, 4]])  # target argmax at gamma + 1 = 4 positions
  draft = jnp.array([[1, 2, 0]])  # agrees twice, then differs
  p = jax.nn.one_hot(p_argmax, v)
  q = jax.nn.one_hot(draft, v)
  keys = jax.random.split(jax.random.key(0), 1)
  n_acc, x = speculative.verify(keys, keys, draft, q, p)
  assert int(n_acc[0]) == 2 and int(x[0]) == 3


def test_verify_accepts_everything_when_draft_equals_target():
  probs = jax.nn.softmax(jax.random.normal(jax.random.key(0), (64, 4, 7)), axis=-1)
  draft = jax.random.categorical(jax.random.key(1), jnp.log(probs[:, :3]))
  keys = jax.random.split(jax.random.key(2), 64)
  n_acc, _ = jax.jit(speculative.verify)(keys, keys, draft, probs[:, :3], probs)
  assert bool(jnp.all(n_acc == 3))


def test_greedy_speculative_equals_greedy_target_decoding():
  tcfg = cfg_of()
  tdef, tparams = transformer.create(tcfg, jax.random.key(0))
  # The draft: the target's weights plus noise (it agrees often, not always), held in the
  # one-buffer-per-layer layout, so its cache is laid out unlike the target's.
  dcfg, ddef, dparams = transformer.unstack_layers(
      tcfg, noisy_copy(tparams, jax.random.key(1), 0.1))
  greedy = sampling.SamplingConfig(temperature=0.0)
  n_new, eot, gamma = 12, tcfg.vocab_size - 1, 3
  prompts = [[3, 1, 4, 1, 5], [7], [2, 7, 1]]  # different lengths; one of a single token
  padded, lengths = generation.pad_prompts(prompts, 0)
  keys = jax.random.split(jax.random.key(3), 3)
  plain = generation.make_generate(tcfg, tdef, generation.DecodeSpec(n_new, eot, greedy))
  spec = speculative.make_generate(
      tcfg, tdef, dcfg, ddef, speculative.SpeculativeSpec(gamma, n_new, eot, greedy))
  out = spec(tparams, dparams, padded, lengths, keys)
  assert generation.trim(generation.Generated(out.tokens_BxN, out.lengths_B)) == generation.trim(
      plain(tparams, padded, lengths, keys))
  # The draft was partly accepted, and the rows advanced by different amounts.
  assert 0 < speculative.acceptance_rate(out) < 1
  assert len(set(np.asarray(out.rounds_B).tolist())) > 1


def exact_two_token_distribution(graphdef, params, prompt, vocab, sc):
  """P(x1, x2 | prompt) as a (V, V) table, from the full forward pass."""
  first = sampling.distribution(transformer.apply(graphdef, params, jnp.asarray([prompt]))[0, -1], sc)
  seqs = jnp.asarray([prompt + [x] for x in range(vocab)])
  second = sampling.distribution(transformer.apply(graphdef, params, seqs)[:, -1], sc)
  return np.asarray(first[:, None] * second, np.float64)


def chi_square_pvalue(counts, probs):
  """Pearson's test of counts against probs, pooling cells expected below 5 into one."""
  n = counts.sum()
  expected = probs.ravel() * n
  counts = counts.ravel()
  small = expected < 5
  obs = np.append(counts[~small], counts[small].sum())
  exp = np.append(expected[~small], expected[small].sum())
  keep = exp > 0
  obs, exp = obs[keep], exp[keep] * (obs[keep].sum() / exp[keep].sum())
  return stats.chisquare(obs, exp).pvalue


@pytest.mark.parametrize("gamma,sc", [
    (1, sampling.SamplingConfig(temperature=1.0)),
    (3, sampling.SamplingConfig(temperature=0.8, top_k=6)),
], ids=["gamma1-t1", "gamma3-topk"])
def test_sampled_speculative_preserves_the_target_distribution(gamma, sc):
  vocab, n = 8, 20_000
  tcfg = cfg_of(vocab_size=vocab, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32,
                init_std=0.5)
  dcfg = cfg_of(vocab_size=vocab, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=16,
                init_std=0.5)
  tdef, tparams = transformer.create(tcfg, jax.random.key(10))
  ddef, dparams = transformer.create(dcfg, jax.random.key(11))
  prompt = [1, 2, 3]
  padded, lengths = generation.pad_prompts([prompt] * n, 0)
  keys = jax.random.split(jax.random.key(12), n)
  gen = speculative.make_generate(
      tcfg, tdef, dcfg, ddef, speculative.SpeculativeSpec(gamma, 2, eot_id=-1, sampling=sc))
  out = gen(tparams, dparams, padded, lengths, keys)
  first2 = np.asarray(out.tokens_BxN[:, :2])
  counts = np.zeros((vocab, vocab))
  np.add.at(counts, (first2[:, 0], first2[:, 1]), 1)

  p_target = exact_two_token_distribution(tdef, tparams, prompt, vocab, sc)
  p_draft = exact_two_token_distribution(ddef, dparams, prompt, vocab, sc)
  alpha = speculative.acceptance_rate(out)
  assert 0.2 < alpha < 0.95, alpha  # both the acceptance and the residual path were exercised
  assert chi_square_pvalue(counts, p_target) > 1e-3
  assert chi_square_pvalue(counts, p_draft) < 1e-6
  # The first token alone as well: the marginal of the joint table.
  assert chi_square_pvalue(counts.sum(1), p_target.sum(1)) > 1e-3


def test_expected_tokens_per_call_formula():
  assert speculative.expected_tokens_per_call(0.0, 4) == 1.0
  assert speculative.expected_tokens_per_call(1.0, 4) == 5.0
  assert abs(speculative.expected_tokens_per_call(0.5, 2) - 1.75) < 1e-12
