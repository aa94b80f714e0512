"""The tokenizer side of a Hugging Face directory: special tokens and tokenizer_config.json.

llmlab's tokenizers name end-of-text "<|endoftext|>" and padding "<|pad|>" (model/tokens.py).
A Hugging Face tokenizer declares its own in tokenizer_config.json / special_tokens_map.json
(eos_token, pad_token, ...) or as ids in config.json. On import llmlab's roles are mapped onto
the declared tokens, never by adding tokens (which could overflow the embedding table):

  end-of-text  "<|endoftext|>" if the vocabulary has it, else the declared eos token
  padding      "<|pad|>" if the vocabulary has it, else the declared pad token, else unk, else
               bos, else end-of-text. llmlab uses padding only to mask loss targets, so the best
               stand-in is a token that never occurs as a target in packed text: unk and bos
               never do (llmlab encodes without special tokens); masking eos would keep a
               fine-tuned model from learning to stop, hence last.

A text starts with whatever the Hugging Face tokenizer puts before it (start_token), not with the
declared bos token: Llama 3's tokenizer.json prepends "<|begin_of_text|>", while many other
directories declare a bos (or name a bos_token_id in config.json) that their tokenizer never adds.
transformers 5 (5.24, checked by tests/test_interop.py) encodes with tokenizer.json's
post-processor, and adds nothing when there is none; add_bos_token in tokenizer_config.json
does not change that, and a bos_token_id in config.json adds nothing.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from tokenizers import Tokenizer

from model.tokens import EOT, PAD

# Small files a Hugging Face directory keeps next to tokenizer.json; carried through unchanged.
SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
              "chat_template.jinja", "chat_template.json", "added_tokens.json")
_ROLES = ("eos", "pad", "bos", "unk")


def _content(value) -> Optional[str]:
  # tokenizer_config.json holds a token as a string, or as an AddedToken dict with "content".
  if isinstance(value, dict):
    value = value.get("content")
  return value if isinstance(value, str) and value else None


def _read_json(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  return data if isinstance(data, dict) else {}


def _tokenizer_files_token(hf_dir: str, role: str) -> Optional[str]:
  """The token `role` names in tokenizer_config.json, else in special_tokens_map.json, or None."""
  files = [_read_json(os.path.join(hf_dir, f))
           for f in ("tokenizer_config.json", "special_tokens_map.json")]
  return next((t for t in (_content(f.get(f"{role}_token")) for f in files) if t), None)


def declared_special_tokens(hf_dir: str, tok: Tokenizer, hf_config: dict) -> dict[str, Optional[str]]:
  """{"eos", "pad", "bos", "unk"}: the token each role names in the directory, or None."""
  out: dict[str, Optional[str]] = {}
  for role in _ROLES:
    token = _tokenizer_files_token(hf_dir, role)
    if token is None:  # fall back on the model config's ids
      idx = hf_config.get(f"{role}_token_id")
      idx = idx[0] if isinstance(idx, list) and idx else idx
      token = tok.id_to_token(idx) if isinstance(idx, int) else None
    out[role] = token if token is not None and tok.token_to_id(token) is not None else None
  return out


# Texts to watch the post-processor at work: any vocabulary encodes one of them to some token.
_PROBES = ("a", "the", "0", " ")


def start_token(hf_dir: str, tok: Tokenizer) -> Optional[str]:
  """The special token the Hugging Face tokenizer puts before every text (its BOS), or None when
  it adds none, by transformers' rule in the module docstring. ValueError when it puts more than
  one token before a text (llmlab's start is at most one token)."""
  if tok.post_processor is None:
    return None
  for probe in _PROBES:
    plain = tok.encode(probe, add_special_tokens=False)
    if plain.ids:
      break
  else:
    raise ValueError(f"the tokenizer in {hf_dir} encodes none of {_PROBES} to any token")
  full = tok.encode(probe, add_special_tokens=True)
  n_text = len(plain.ids)
  # Where the text's own tokens sit among those the post-processor returns.
  at = next((i for i in range(len(full.ids) - n_text + 1)
             if full.ids[i:i + n_text] == plain.ids
             and not any(full.special_tokens_mask[i:i + n_text])), None)
  if at is None:
    raise ValueError(f"the post-processor of {hf_dir}/tokenizer.json rewrites the text's tokens")
  if at > 1:
    raise ValueError(
        f"the tokenizer in {hf_dir} puts {at} tokens {full.tokens[:at]} before every text; llmlab "
        "starts a text with at most one")
  return full.tokens[0] if at == 1 else None


def llmlab_roles(declared: dict[str, Optional[str]], tok: Tokenizer) -> tuple[Optional[str], str]:
  """(end-of-text token or None, padding token) for llmlab, by the rules in the docstring."""
  has = lambda t: t is not None and tok.token_to_id(t) is not None  # noqa: E731
  eot = EOT if has(EOT) else declared.get("eos")
  pad_choices = (PAD, declared.get("pad"), declared.get("unk"), declared.get("bos"), eot)
  pad = next((t for t in pad_choices if has(t)), None)
  if pad is None:
    pad = tok.id_to_token(0)  # a tokenizer with no special token at all: any id masks
  return eot, pad


def tokenizer_config(eos: Optional[str], pad: Optional[str], max_len: int) -> dict:
  """A tokenizer_config.json that makes AutoTokenizer use tokenizer.json exactly as it is.

  The generic fast class, not LlamaTokenizer: transformers 5 rebuilds a Llama tokenizer's
  pre-tokenizer from its own recipe, which would not be llmlab's byte-level BPE. Spaces are left
  as they are on decode, as llmlab's decode does.
  """
  out = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
         "clean_up_tokenization_spaces": False}
  if eos:
    out["eos_token"] = eos
  if pad:
    out["pad_token"] = pad
  return out
