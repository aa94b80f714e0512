"""The lost-in-the-middle study's training data: synthetic key-value retrieval examples
(train/studies/kv_retrieval.py), each right-padded to exactly one packed row, and one training
run per seed.

Every training example is right-padded with the tokenizer's padding token to exactly
data.seq_len tokens, so with its end-of-text it fills one packed row: examples never share a row
(no key from another example to confuse), each starts its row at position 0 as an evaluation
prompt does, and the padding comes after it, where causal attention never reads it.
"""

from __future__ import annotations

import hashlib
import json
import os

from train import files
from train.studies import sweep as sweep_lib


def _pad_text(n: int) -> str:
  from train.data import tokenizer as tokenizer_lib

  return tokenizer_lib.PAD * n  # the tokenizer reads each as the padding token's id


def build_data(workdir: str, cfg) -> str:
  """Trains the tokenizer on the task's text (in the sweep's shared folder, which every run
  copies) and writes the padded training corpus WORKDIR/data/kv-HASH.jsonl once, HASH naming the
  task, sequence length and vocabulary; returns the corpus's path."""
  from train.studies import kv_retrieval as kv
  from train.data import tokenizer as tokenizer_lib

  key = json.dumps([cfg.task.to_dict(), cfg.base.data.seq_len, cfg.base.data.vocab_size],
                   sort_keys=True, default=str)
  path = os.path.abspath(os.path.join(
      workdir, "data", f"kv-{hashlib.sha1(key.encode()).hexdigest()[:8]}.jsonl"))
  if os.path.exists(path):
    return path
  t = cfg.task
  texts = kv.texts(kv.training_examples(t.examples, t.k_min, t.k_max, t.seed,
                                        t.query_before_fraction, t.questions))
  shared = sweep_lib.shared_dir(workdir, sweep_lib.apply_overrides(cfg.base, {"data.paths": path}))
  if os.path.exists(os.path.join(shared, tokenizer_lib.FILENAME)):
    tok = tokenizer_lib.load(shared)
  else:
    tok = tokenizer_lib.train_bpe(texts, cfg.base.data.vocab_size)
    os.makedirs(shared, exist_ok=True)
    tokenizer_lib.save(tok, shared)
  seq_len = cfg.base.data.seq_len
  lengths = [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]
  if max(lengths) > seq_len:
    raise ValueError(
        f"a training example has {max(lengths)} tokens, more than data.seq_len={seq_len}; "
        "lower task.k_max or task.questions, or raise data.seq_len")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  files.write_jsonl_atomic(path, ({"text": text + _pad_text(seq_len - n)}
                                  for text, n in zip(texts, lengths)))
  check = tokenizer_lib.encode(tok, texts[0] + _pad_text(seq_len - lengths[0]))
  assert len(check) == seq_len, "padding text did not encode to one token per pad"
  return path


def make_points(cfg, workdir: str):
  """One run per training seed (initialisation and data order; the corpus is the same)."""
  base = sweep_lib.apply_overrides(cfg.base, {"data.paths": build_data(workdir, cfg)})
  n_layers, d_model = cfg.model
  over = sweep_lib.model_overrides(n_layers, d_model, cfg.head_dim, cfg.ffn_mult)
  return base, [sweep_lib.make_point(f"L{n_layers}-D{d_model}-seed{seed}", base,
                                     {**over, "train.seed": seed},
                                     {"n_layers": n_layers, "d_model": d_model, "seed": seed})
                for seed in cfg.seeds]


def training_distances(cfg, n: int = 20000) -> dict:
  """How far, in pairs, each training question stands from the pair it asks about: the share of
  training answers at each distance (1 = the last pair). Attention learns to reach as far as
  its training answers were; a gold pair far from the question is rare in training."""
  from train.studies import kv_retrieval as kv

  t = cfg.task
  counts: dict[int, int] = {}
  for e in kv.training_examples(n, t.k_min, t.k_max, t.seed, t.query_before_fraction, t.questions):
    for i in (e.gold,) + e.more:
      counts[e.k - i] = counts.get(e.k - i, 0) + 1
  total = sum(counts.values())
  return {d: counts[d] / total for d in sorted(counts)}

