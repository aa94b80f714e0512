"""The tokenizer side of a Hugging Face directory: special tokens and tokenizer_config.json.

llmlab's tokenizers (train/tokenizer.py) name end-of-text "<|endoftext|>" and padding "<|pad|>".
A Hugging Face tokenizer declares its own in tokenizer_config.json / special_tokens_map.json
(eos_token, pad_token, ...) or as ids in config.json. On import llmlab's roles are mapped onto
the declared tokens, never by adding tokens (which could overflow the embedding table):

  end-of-text  "<|endoftext|>" if the vocabulary has it, else the declared eos token
  padding      "<|pad|>" if the vocabulary has it, else the declared pad token, else unk, else
               bos, else end-of-text. llmlab uses padding only to mask loss targets, so the best
               stand-in is a token that never occurs as a target in packed text: unk and bos
               never do (llmlab encodes without special tokens); masking eos would keep a
               fine-tuned model from learning to stop, hence last.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from tokenizers import Tokenizer

from train import tokenizer as tokenizer_lib

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


def declared_special_tokens(hf_dir: str, tok: Tokenizer, hf_config: dict) -> dict[str, Optional[str]]:
  """{"eos", "pad", "bos", "unk"}: the token each role names in the directory, or None."""
  out: dict[str, Optional[str]] = {}
  files = [_read_json(os.path.join(hf_dir, f))
           for f in ("tokenizer_config.json", "special_tokens_map.json")]
  for role in _ROLES:
    token = next((t for t in (_content(f.get(f"{role}_token")) for f in files) if t), None)
    if token is None:  # fall back on the model config's ids
      idx = hf_config.get(f"{role}_token_id")
      idx = idx[0] if isinstance(idx, list) and idx else idx
      token = tok.id_to_token(idx) if isinstance(idx, int) else None
    out[role] = token if token is not None and tok.token_to_id(token) is not None else None
  return out


def llmlab_roles(declared: dict[str, Optional[str]], tok: Tokenizer) -> tuple[Optional[str], str]:
  """(end-of-text token or None, padding token) for llmlab, by the rules in the docstring."""
  has = lambda t: t is not None and tok.token_to_id(t) is not None  # noqa: E731
  eot = tokenizer_lib.EOT if has(tokenizer_lib.EOT) else declared.get("eos")
  pad_choices = (tokenizer_lib.PAD, declared.get("pad"), declared.get("unk"), declared.get("bos"), eot)
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
