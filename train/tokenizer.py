"""Byte-level BPE with the `tokenizers` library.

256 byte symbols are the initial alphabet, so any Unicode string encodes with no unknown token and
decodes back to exactly itself. A regex pre-split (GPT-2's) keeps merges from crossing character
categories. Two special tokens: end-of-text (between documents) and padding (masked in the loss).
"""

from __future__ import annotations

import os
from typing import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOT = "<|endoftext|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (EOT, PAD)
N_BYTES = 256
FILENAME = "tokenizer.json"


def min_vocab_size() -> int:
  return N_BYTES + len(SPECIAL_TOKENS)


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
  """Learns merges by frequency from `texts` until the vocabulary has `vocab_size` entries."""
  if vocab_size < min_vocab_size():
    raise ValueError(
        f"data.vocab_size={vocab_size} is too small: byte-level BPE needs at least "
        f"{min_vocab_size()} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)")
  tok = Tokenizer(models.BPE())
  # use_regex=True is GPT-2's pre-split; add_prefix_space=False keeps decode(encode(s)) == s.
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size,
      special_tokens=list(SPECIAL_TOKENS),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
  )
  tok.train_from_iterator(_nonempty(texts), trainer=trainer)
  return tok


def _nonempty(texts: Iterable[str]) -> Iterator[str]:
  for t in texts:
    if t:
      yield t


def save(tok: Tokenizer, workdir: str) -> str:
  path = os.path.join(workdir, FILENAME)
  tmp = path + ".tmp"
  tok.save(tmp)
  os.replace(tmp, path)  # atomic: a crash never leaves half a tokenizer.json
  return path


def load(workdir: str) -> Tokenizer:
  path = os.path.join(workdir, FILENAME)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no {FILENAME} in {workdir}: train there first (experiments.train)")
  return Tokenizer.from_file(path)


def special_id(tok: Tokenizer, token: str) -> int:
  idx = tok.token_to_id(token)
  if idx is None:
    raise ValueError(f"tokenizer has no special token {token!r}")
  return idx


def encode(tok: Tokenizer, text: str) -> list[int]:
  return tok.encode(text, add_special_tokens=False).ids


def decode(tok: Tokenizer, ids: Iterable[int]) -> str:
  return tok.decode(list(ids), skip_special_tokens=False)
