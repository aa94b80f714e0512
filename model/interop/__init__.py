"""Hugging Face interoperability: Llama and Mixtral checkpoints into and out of llmlab.

  config, params = load_hf("path/to/hf_dir")                  # ModelConfig, nnx.State
  save_hf("path/to/out", config, params, tokenizer=tok)     # transformers loads the result

The seams: hf_config (config.json <-> ModelConfig, and the one-line refusals), hf_weights (tensor
names and layouts, the rotary convention), safetensors_io (single or sharded files, float32 and
bfloat16), hf_tokenizer (special tokens and tokenizer_config.json). Only safetensors' numpy API
is used: torch and transformers are needed by the tests, never here.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np
from flax import nnx
from tokenizers import Tokenizer

from model.config import DTYPES, ModelConfig
from model.interop import hf_config, hf_tokenizer, hf_weights, safetensors_io
from model.interop.hf_config import InteropError

__all__ = ["InteropError", "load_hf", "read_hf_config", "save_hf"]

_DTYPE_NAMES = {np.dtype(np.float32): "float32", np.dtype("bfloat16"): "bfloat16",
                np.dtype(np.float16): "float16"}


def read_hf_config(path: str) -> dict:
  """The config.json of a Hugging Face directory, as a dict."""
  config_path = os.path.join(path, "config.json")
  if not os.path.exists(config_path):
    raise InteropError(f"{path} has no config.json: not a Hugging Face model directory")
  with open(config_path, encoding="utf-8") as f:
    return json.load(f)


def _checkpoint_dtype(reader: safetensors_io.SafetensorsReader) -> str:
  name = hf_weights.TOP[0].hf  # the embedding: present in every checkpoint
  if name not in reader.names():
    raise InteropError(f"checkpoint has no tensor {name!r}, which config.json implies")
  dtype = reader.get(name).dtype
  if dtype not in _DTYPE_NAMES:
    raise InteropError(f"tensor {name!r} is {dtype}; llmlab reads float32, bfloat16, float16")
  return _DTYPE_NAMES[dtype]


def load_hf(path: str, *, param_dtype: Optional[str] = None, dtype: str = "float32",
            scan_layers: bool = True) -> tuple[ModelConfig, nnx.State]:
  """(ModelConfig, params) of the Llama or Mixtral model in a Hugging Face directory.

  param_dtype: storage dtype of the parameters; None keeps the checkpoint's (so a bfloat16
  checkpoint stays bfloat16 and exports back bit for bit). dtype: the compute dtype.
  Raises InteropError, one line naming the field or tensor, for anything llmlab cannot represent.
  """
  if param_dtype is not None and param_dtype not in DTYPES:
    raise InteropError(f"param_dtype={param_dtype!r} is unknown; allowed: {', '.join(DTYPES)}")
  hf = read_hf_config(path)
  hf_config.to_model_config(hf)  # refuse an unsupported config before touching the weights
  with safetensors_io.SafetensorsReader(path) as reader:
    cfg = hf_config.to_model_config(
        hf, param_dtype=param_dtype or _checkpoint_dtype(reader), dtype=dtype,
        scan_layers=scan_layers)
    params = hf_weights.import_params(reader, cfg)
  return cfg, params


def save_hf(path: str, config: ModelConfig, params: nnx.State,
            tokenizer: Optional[Tokenizer] = None, *, eos_token: Optional[str] = None,
            pad_token: Optional[str] = None, base_config: Optional[dict] = None,
            max_shard_bytes: Optional[int] = None) -> None:
  """Writes a directory that transformers' AutoModelForCausalLM and AutoTokenizer load.

  A dense model is written as Llama, an MoE model (moe.every = 1) as Mixtral, with tensors in
  the parameters' own dtype. tokenizer: written as tokenizer.json plus a tokenizer_config.json
  naming eos_token and pad_token (default: llmlab's "<|endoftext|>" and "<|pad|>" when the
  vocabulary has them), whose ids go into config.json. base_config: a config.json to extend
  (see hf_config.from_model_config); its token ids are kept.
  max_shard_bytes: shard above this size (default 5 GiB).
  """
  tensors = hf_weights.export_params(params, config)
  dtype = _DTYPE_NAMES[next(iter(tensors.values())).dtype]
  out = hf_config.from_model_config(config, dtype=dtype, base=base_config)
  if tokenizer is not None:
    default_eos, default_pad = hf_tokenizer.llmlab_roles({}, tokenizer)
    eos_token, pad_token = eos_token or default_eos, pad_token or default_pad
    for role, token in (("eos", eos_token), ("pad", pad_token)):
      if token is not None and tokenizer.token_to_id(token) is None:
        raise InteropError(f"{role}_token={token!r} is not in the tokenizer's vocabulary")
  if base_config is None:
    # Explicit ids: left out, transformers would assume Llama's (bos 1, eos 2). With a base
    # config its ids stay as they were: llmlab's padding stand-in is not the model's pad token.
    ids = {"bos": None, "eos": eos_token, "pad": pad_token} if tokenizer is not None else {}
    for role in ("bos", "eos", "pad"):
      token = ids.get(role)
      out[f"{role}_token_id"] = tokenizer.token_to_id(token) if token is not None else None
  safetensors_io.write(path, tensors, max_shard_bytes)
  with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
    json.dump(out, f, indent=2)
  if tokenizer is not None:
    tokenizer.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as f:
      json.dump(hf_tokenizer.tokenizer_config(eos_token, pad_token, config.max_seq_len), f, indent=2)
