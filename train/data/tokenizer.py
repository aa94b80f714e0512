"""Byte-level BPE with the `tokenizers` library.

256 byte symbols are the initial alphabet, so any Unicode string encodes with no unknown token and
decodes back to exactly itself. A regex pre-split (GPT-2's) keeps merges from crossing character
categories. Two special tokens: end-of-text (between documents) and padding (masked in the loss).

An imported tokenizer (experiments.convert) may name those roles otherwise, say "</s>" and
"<unk>": set_roles records the names on the tokenizer object, save writes them to
special_tokens.json beside tokenizer.json, load reads them back, and special_id(tok, EOT) then
answers the id of "</s>". Every caller asks for a role by llmlab's name and gets the right id.

Where a text starts (start_ids), for documents and prompts alike:
  llmlab's own tokenizer   after an end-of-text: training joins documents with it, so the model
                           saw every document but the first begin right after one; a prompt is
                           preceded by end-of-text to look the same.
  an imported one          with exactly what its Hugging Face tokenizer puts before a text: the
                           BOS role names that token ("<s>"), or is NO_BOS when it adds none. A
                           prompt then encodes as transformers encodes it, and a model that never
                           saw an end-of-text at the start of a text is not given one.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Iterator, Optional

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

# The token names live in model/ (model/interop needs them); re-exported here for every caller.
from model.tokens import EOT, PAD, SPECIAL_TOKENS
from train import files

N_BYTES = 256
FILENAME = "tokenizer.json"
ROLES_FILENAME = "special_tokens.json"  # {"<|endoftext|>": "</s>", ...}: present only when renamed
BOS = "bos"  # a role only: llmlab's own documents start after an end-of-text, with no BOS token
NO_BOS = ""  # the BOS role of an imported tokenizer that starts a text with nothing
_ROLES_ATTR = "llmlab_roles"  # the tokenizers.Tokenizer instance carries the mapping


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


def set_roles(tok: Tokenizer, eot: Optional[str] = None, pad: Optional[str] = None,
              bos: Optional[str] = None) -> None:
  """Names the tokens that play end-of-text and padding (None keeps llmlab's own name), and the
  token an imported tokenizer starts a text with: its BOS ("<s>"), or NO_BOS when it adds none.
  bos=None keeps llmlab's own start, an end-of-text."""
  for role, name in ((EOT, eot), (PAD, pad), (BOS, bos)):
    if name and tok.token_to_id(name) is None:
      raise ValueError(f"the tokenizer has no token {name!r} to play {role!r}")
  named = {role: name for role, name in ((EOT, eot), (PAD, pad), (BOS, bos)) if name is not None}
  setattr(tok, _ROLES_ATTR, named)


def _named(tok: Tokenizer) -> dict[str, str]:
  """Only the roles set_roles named (what special_tokens.json holds)."""
  return dict(getattr(tok, _ROLES_ATTR, None) or {})


def roles(tok: Tokenizer) -> dict[str, str]:
  """Role -> token name: EOT and PAD always (llmlab's own names unless renamed), BOS if named."""
  return {EOT: EOT, PAD: PAD, **_named(tok)}


def save(tok: Tokenizer, workdir: str) -> str:
  """Writes workdir/tokenizer.json (the bytes Tokenizer.save writes) and its roles. Atomic, and
  through files.write_atomic rather than Tokenizer.save, whose failure on a full disk is a bare
  Exception naming no file and leaves a partial tokenizer.json.tmp behind."""
  path = os.path.join(workdir, FILENAME)
  save_roles(tok, workdir)
  files.write_atomic(path, tok.to_str(pretty=True))
  return path


def save_roles(tok: Tokenizer, workdir: str) -> None:
  """Writes special_tokens.json when a role is named (a native tokenizer needs none)."""
  r = _named(tok)
  if not r:
    return
  files.write_json_atomic(os.path.join(workdir, ROLES_FILENAME), r, indent=2)


def load(workdir: str) -> Tokenizer:
  path = os.path.join(workdir, FILENAME)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no {FILENAME} in {workdir}: train there first (experiments.train)")
  tok = Tokenizer.from_file(path)
  roles_path = os.path.join(workdir, ROLES_FILENAME)
  if os.path.exists(roles_path):
    with open(roles_path, encoding="utf-8") as f:
      r = json.load(f)
    set_roles(tok, r.get(EOT), r.get(PAD), r.get(BOS))
  return tok


def start_ids(tok: Tokenizer) -> list[int]:
  """What a text starts with (module docstring): [bos] or [] for an imported tokenizer, as its
  BOS role says; [end-of-text] for llmlab's own, whose documents follow one another, each after
  the previous one's end-of-text."""
  bos = roles(tok).get(BOS)
  if bos is None:
    return [special_id(tok, EOT)]
  return [tok.token_to_id(bos)] if bos != NO_BOS else []


def document_boundary(tok: Tokenizer) -> tuple[int, bool]:
  """(token id, starts_after) delimiting documents packed by train/data/pipeline.py (see
  model.masks.packed_documents): a document starts at its start token (llmlab's end-of-text, an
  imported BOS), or right after end-of-text for an imported tokenizer that has no BOS."""
  start = start_ids(tok)
  return (start[0], False) if start else (special_id(tok, EOT), True)


def special_id(tok: Tokenizer, token: str) -> int:
  """The id of the token playing `token` (EOT or PAD), by the tokenizer's roles."""
  if token == BOS:
    raise ValueError("BOS is an optional role: use start_ids(tok)")
  name = roles(tok).get(token, token)
  idx = tok.token_to_id(name)
  if idx is None:
    raise ValueError(f"tokenizer has no special token {name!r}")
  return idx


def encode(tok: Tokenizer, text: str) -> list[int]:
  return tok.encode(text, add_special_tokens=False).ids


def decode(tok: Tokenizer, ids: Iterable[int]) -> str:
  return tok.decode(list(ids), skip_special_tokens=False)
