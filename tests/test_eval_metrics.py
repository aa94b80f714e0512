"""train/studies/answer_metrics.py: metrics on hand-made examples; padded batches score like single prompts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import transformer
from model.config import ModelConfig
from train.studies import answer_metrics as em


def test_exact_match_on_hand_made_examples():
  assert em.exact_match(" 47", "47")
  assert not em.exact_match("470", "47")
  assert em.exact_match(" 4 7", "47", normalise=lambda s: "".join(s.split()))


@pytest.mark.parametrize("a, b, d", [
    ([], [], 0), ([1, 2, 3], [1, 2, 3], 0), ([1, 2, 3], [], 3), ([], [4, 5], 2),
    ([1, 2, 3], [1, 9, 3], 1),  # substitution
    ([1, 2, 3], [1, 3], 1),  # deletion
    ([1, 3], [1, 2, 3], 1),  # insertion
    ([1, 2, 3, 4], [2, 1, 4, 3], 3), ([5, 6], [7, 8], 2),
])
def test_token_edit_distance_on_hand_made_examples(a, b, d):
  assert em.token_edit_distance(a, b) == d == em.token_edit_distance(b, a)


@pytest.fixture(scope="module")
def model():
  cfg = ModelConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=32,
                    max_seq_len=64)
  graphdef, _ = transformer.abstract(cfg)
  return graphdef, jax.jit(lambda key: transformer.create(cfg, key)[1])(jax.random.key(0))


_apply = jax.jit(transformer.apply, static_argnums=0)


def _greedy_alone(graphdef, params, prompt, n):
  """Reference: one prompt, no padding, the whole sequence recomputed per token."""
  seq = list(prompt)
  for _ in range(n):
    logits = _apply(graphdef, params, jnp.asarray([seq]))
    seq.append(int(jnp.argmax(logits[0, -1])))
  return seq[len(prompt):]


def test_padded_batch_decodes_like_each_prompt_alone(model):
  graphdef, params = model
  prompts = [[3, 4, 5, 6, 7, 8], [10], [11, 12, 13]]
  got = em.greedy_continuations(graphdef, params, prompts, 3, pad_id=1, batch_size=4)
  assert got == [_greedy_alone(graphdef, params, p, 3) for p in prompts]


def test_each_prompt_gets_its_own_token_limit(model):
  graphdef, params = model
  prompts = [[3, 4, 5, 6, 7, 8], [10], [11, 12, 13]]
  full = em.greedy_continuations(graphdef, params, prompts, 3, pad_id=1, batch_size=4)
  got = em.greedy_continuations(graphdef, params, prompts, [1, 3, 2], pad_id=1, batch_size=4)
  assert got == [full[0][:1], full[1], full[2][:2]]


def test_generation_is_cut_at_a_stop_token(model):
  graphdef, params = model
  full = _greedy_alone(graphdef, params, [11, 12, 13], 3)
  got = em.greedy_continuations(graphdef, params, [[11, 12, 13]], 3, pad_id=1, stop_ids=[full[2]],
                                batch_size=4)
  assert got == [full[:full.index(full[2])]]


def test_teacher_forced_scores_match_a_direct_computation(model):
  graphdef, params = model
  prompts, answers = [[3, 4, 5, 6], [7]], [[8, 9], [10, 11, 12]]
  logp, acc = em.teacher_forced_scores(graphdef, params, prompts, answers, pad_id=1, batch_size=2)
  for i, (p, a) in enumerate(zip(prompts, answers)):
    seq = p + a
    lp = jax.nn.log_softmax(_apply(graphdef, params, jnp.asarray([seq[:-1]]))[0], -1)
    rows = range(len(p) - 1, len(seq) - 1)
    assert logp[i] == pytest.approx(sum(float(lp[t, seq[t + 1]]) for t in rows), abs=1e-4)
    assert acc[i] == pytest.approx(np.mean([int(jnp.argmax(lp[t])) == seq[t + 1] for t in rows]))
