"""A Hugging Face checkpoint directory (Llama, Mixtral) <-> an llmlab workdir.

import_workdir reads DIR (config.json, model.safetensors or shards with their index,
tokenizer.json when present) and writes a workdir laid out like one written by training, so that
checkpoint.load_params, train/saved_run.py, experiments.train and the alignment stages read it:
  config.json      the full config tree: model from the checkpoint, data and train defaults
  config.py        that config as a config file, to fine-tune with (CONFIG_PY)
  tokenizer.json   DIR's tokenizer, byte for byte
  hf/              DIR's config.json and tokenizer side files, carried back out by export_workdir
  checkpoints/0/   the imported parameters, a fresh optimizer state and data position

export_workdir writes DIR from the newest readable checkpoint of the workdir; transformers loads
it with AutoModelForCausalLM.from_pretrained(DIR) and AutoTokenizer.from_pretrained(DIR).
experiments.convert is the command line.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
from typing import Any, Optional

import ml_collections
from tokenizers import Tokenizer

from model import interop, transformer
from model.config import ModelConfig, count_params
from model.interop import hf_tokenizer, safetensors_io
from train import checkpoint as ckpt_lib
from train import config as config_lib
from train import optimizer as optimizer_lib
from train import step as step_lib
from train.data import pipeline as data_lib
from train.data import tokenizer as tokenizer_lib

HF_DIR = "hf"  # inside the workdir: the imported directory's config.json and side files
# Fine-tuning defaults written into the workdir's config (the pretraining default lr of 3e-3
# would wreck a trained model); override them on the command line.
FINETUNE = {"lr": 3e-5, "warmup_steps": 10, "steps": 100, "weight_decay": 0.0}

CONFIG_PY = '''"""The config of this workdir (its config.json), to fine-tune or resume it:

  python -m experiments.train --workdir=THIS_DIR --config=THIS_DIR/config.py \\
      --config.data.paths=FILES [--config.train.steps=...]

Written by experiments.convert.
"""

import json
import os

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.json")
  with open(path, encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))
'''

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30}


def parse_size(text: str) -> int:
  """Bytes of "5GB", "500MB", "2GiB" or "123" (transformers' max_shard_size spelling)."""
  m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
  if not m or m.group(2).upper() not in _UNITS:
    raise ValueError(f"--max_shard_size={text!r} is not a size like 5GB, 500MB or 2GiB")
  return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def workdir_config(model_cfg: ModelConfig, tok: Optional[Tokenizer],
                   tokens: dict[str, Optional[str]], seq_len: int,
                   defaults: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config tree of an imported workdir: defaults (experiments/configs/default.py's) with the
  imported model, the tokenizer's size, its special tokens (data.eot_token, data.pad_token: the
  tokens that play llmlab's end-of-text and padding; data.bos_token: the token the Hugging Face
  tokenizer puts before every text, or None when it adds none) and fine-tuning defaults."""
  # Through JSON: default.py ties model.vocab_size to data.vocab_size by reference, and the two
  # differ when the embedding table is larger than the tokenizer.
  c = ml_collections.ConfigDict(json.loads(defaults.to_json()))
  c.model = ml_collections.ConfigDict(model_cfg.to_dict())
  n_tokens = tok.get_vocab_size() if tok is not None else model_cfg.vocab_size
  c.data.vocab_size = min(n_tokens, model_cfg.vocab_size)
  c.data.seq_len = min(seq_len, model_cfg.max_seq_len)
  c.data.update(tokens)
  c.train.update(FINETUNE)
  return c


def _tokenizer_roles(hf_dir: str, tok: Optional[Tokenizer], hf: dict) -> dict[str, Optional[str]]:
  """data.eot_token, pad_token and bos_token of the imported tokenizer (all None without one)."""
  if tok is None:
    return {"eot_token": None, "pad_token": None, "bos_token": None}
  declared = hf_tokenizer.declared_special_tokens(hf_dir, tok, hf)
  eot, pad = hf_tokenizer.llmlab_roles(declared, tok)
  # What the tokenizer itself prepends, not the declared bos: config.json's bos_token_id and a
  # bos_token in tokenizer_config.json are often a token the tokenizer never adds.
  return {"eot_token": eot, "pad_token": pad, "bos_token": hf_tokenizer.start_token(hf_dir, tok)}


def _copy_hf_files(hf_dir: str, workdir: str, tok: Optional[Tokenizer],
                   tokens: dict[str, Optional[str]]) -> None:
  """hf/ (config.json and side files), tokenizer.json with its roles, and config.py."""
  os.makedirs(os.path.join(workdir, HF_DIR), exist_ok=True)
  for name in ("config.json", *hf_tokenizer.SIDE_FILES):
    if os.path.exists(os.path.join(hf_dir, name)):
      shutil.copyfile(os.path.join(hf_dir, name), os.path.join(workdir, HF_DIR, name))
  if tok is not None:
    shutil.copyfile(os.path.join(hf_dir, tokenizer_lib.FILENAME),
                    os.path.join(workdir, tokenizer_lib.FILENAME))
    # Which tokens play end-of-text and padding and start a text, for every script that reads
    # the workdir. NO_BOS, not None, when the tokenizer adds nothing: an imported model's texts
    # start with what its own tokenizer puts there, never with llmlab's end-of-text.
    tokenizer_lib.set_roles(tok, tokens["eot_token"], tokens["pad_token"],
                            tokens["bos_token"] or tokenizer_lib.NO_BOS)
    tokenizer_lib.save_roles(tok, workdir)
  with open(os.path.join(workdir, "config.py"), "w", encoding="utf-8") as f:
    f.write(CONFIG_PY)


def _save_step_0(workdir: str, model_cfg: ModelConfig, params: Any,
                 run: config_lib.RunSettings) -> None:
  """checkpoints/0: the train state exactly as train/state.py builds it, but from params."""
  t = run.train
  graphdef, _ = transformer.abstract(model_cfg)
  tx = optimizer_lib.make(t, t.steps)
  state = step_lib.init_state(params, tx, t.seed)
  data_state = data_lib.train_iterator([t.batch_size], [1.0], t.batch_size, t.seed).get_state()
  ckpt = ckpt_lib.Checkpointer.of(os.path.join(workdir, "checkpoints"), run.checkpoint)
  try:
    ckpt.save(0, state, data_state)
  finally:
    ckpt.close()


def safetensors_problem(path: str) -> Optional[str]:
  """What makes a .safetensors file unreadable, or None: too short for its 8-byte header
  length, a header that runs past the end or is not JSON, or tensor data that ends before the
  header says (a truncated download). Reads the header only."""
  size = os.path.getsize(path)
  if size < 8:
    return f"is {size} bytes, too short to be a safetensors file"
  with open(path, "rb") as f:
    n = int.from_bytes(f.read(8), "little")
    if 8 + n > size:
      return f"is truncated: its header says {8 + n} bytes of header, the file has {size} bytes"
    try:
      header = json.loads(f.read(n))
      end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
                default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
      return "has a header that is not a safetensors header"
  if 8 + n + end != size:
    return f"is truncated or padded: {size} bytes, its header describes {8 + n + end}"
  return None


def check_safetensors(hf_dir: str) -> None:
  """InteropError naming the first unreadable .safetensors file in hf_dir (a truncated or empty
  download), before any of them is read: the safetensors library's own error names no file."""
  for path in sorted(glob.glob(os.path.join(glob.escape(hf_dir), "*.safetensors"))):
    problem = safetensors_problem(path)
    if problem:
      raise interop.InteropError(f"--from_hf: {path} {problem}; download it again")


def import_workdir(hf_dir: str, workdir: str, *, defaults: ml_collections.ConfigDict,
                   param_dtype: Optional[str] = None, seq_len: int = 256) -> dict:
  """Writes an llmlab workdir holding the Hugging Face model in hf_dir; returns a summary.

  defaults: the config tree whose data, train, checkpoint and sharding sections the workdir's
  config starts from (experiments/configs/default.py's get_config(); a package cannot import it).
  """
  if os.path.exists(os.path.join(workdir, "config.json")) or os.path.exists(
      os.path.join(workdir, "checkpoints")):
    raise config_lib.ConfigError(f"{workdir} already holds a run; convert into a new --workdir")
  hf = interop.read_hf_config(hf_dir)
  check_safetensors(hf_dir)
  model_cfg, params = interop.load_hf(hf_dir, param_dtype=param_dtype)
  tok_path = os.path.join(hf_dir, tokenizer_lib.FILENAME)
  tok = Tokenizer.from_file(tok_path) if os.path.exists(tok_path) else None
  tokens = _tokenizer_roles(hf_dir, tok, hf)
  config = workdir_config(model_cfg, tok, tokens, seq_len, defaults)
  run = config_lib.resolve(config)
  _copy_hf_files(hf_dir, workdir, tok, tokens)
  _save_step_0(workdir, model_cfg, params, run)
  config_lib.save(workdir, config)  # last: a workdir with config.json is a complete one
  return {"workdir": workdir, "model": "mixtral" if model_cfg.moe.enabled else "llama",
          "params": count_params(model_cfg)["total"], "param_dtype": model_cfg.param_dtype,
          "tokenizer": tok is not None, **tokens}


def _holds_workdir(directory: str) -> bool:
  """Does directory hold an llmlab workdir (checkpoints/, or a config.json with a model section)?"""
  if os.path.isdir(os.path.join(directory, "checkpoints")):
    return True
  try:
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
      config = json.load(f)
  except (OSError, ValueError):
    return False
  return isinstance(config, dict) and isinstance(config.get("model"), dict)


def export_targets(workdir: str, hf_dir: str) -> list[str]:
  """The files in hf_dir an export of workdir would replace: config.json, the tokenizer's files,
  the workdir's carried side files, and any safetensors file or index (stale weights)."""
  side = os.path.join(workdir, HF_DIR)
  names = {"config.json", tokenizer_lib.FILENAME, safetensors_io.INDEX,
           *hf_tokenizer.SIDE_FILES, *(os.listdir(side) if os.path.isdir(side) else ())}
  found = {n for n in names if os.path.lexists(os.path.join(hf_dir, n))}
  found |= {os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(hf_dir),
                                                                "*.safetensors"))}
  return sorted(found)


def check_export_target(workdir: str, hf_dir: str, overwrite: bool) -> list[str]:
  """ConfigError (one line) when hf_dir holds an llmlab workdir or a file the export would
  replace, unless overwrite; returns the files that will be replaced."""
  if os.path.abspath(hf_dir) == os.path.abspath(workdir):
    raise config_lib.ConfigError(f"--to_hf={hf_dir} is the workdir itself; export into a new "
                                 "directory")
  if os.path.exists(hf_dir) and not os.path.isdir(hf_dir):
    raise config_lib.ConfigError(f"--to_hf={hf_dir} is a file; export into a new directory")
  replaced = export_targets(workdir, hf_dir) if os.path.isdir(hf_dir) else []
  if overwrite:
    return replaced
  if os.path.isdir(hf_dir) and _holds_workdir(hf_dir):
    raise config_lib.ConfigError(
        f"--to_hf={hf_dir} holds an llmlab workdir (its config.json or checkpoints/); export "
        "into a new directory, or pass --overwrite to replace its files")
  if replaced:
    raise config_lib.ConfigError(
        f"--to_hf={hf_dir} already holds {', '.join(replaced)}, which the export would replace; "
        "export into a new directory, or pass --overwrite")
  return replaced


def export_workdir(workdir: str, hf_dir: str, *, max_shard_bytes: Optional[int] = None,
                   overwrite: bool = False) -> dict:
  """Writes the newest checkpoint of workdir as a Hugging Face directory; returns a summary.

  Refuses (ConfigError, before reading anything) a directory that holds an llmlab workdir or any
  file the export would write, unless overwrite, which replaces them (old safetensors files
  removed first: stale shards beside new ones would load the wrong weights)."""
  replaced = check_export_target(workdir, hf_dir, overwrite)
  model_cfg, _, params = ckpt_lib.load_params(workdir)
  for name in replaced:
    if name.endswith(".safetensors") or name == safetensors_io.INDEX:
      os.remove(os.path.join(hf_dir, name))
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    data = json.load(f).get("data", {})
  tok_path = os.path.join(workdir, tokenizer_lib.FILENAME)
  tok = tokenizer_lib.load(workdir) if os.path.exists(tok_path) else None
  base_path = os.path.join(workdir, HF_DIR, "config.json")
  base = interop.read_hf_config(os.path.dirname(base_path)) if os.path.exists(base_path) else None
  # A workdir made from an imported one (an alignment stage, say) has the roles only beside its
  # tokenizer, not in its config.
  named = tokenizer_lib.roles(tok) if tok is not None else {}
  eos = data.get("eot_token") or named.get(tokenizer_lib.EOT)
  pad = data.get("pad_token") or named.get(tokenizer_lib.PAD)
  interop.save_hf(hf_dir, model_cfg, params, tok, eos_token=eos, pad_token=pad, base_config=base,
                  max_shard_bytes=max_shard_bytes)
  if tok is not None:
    shutil.copyfile(tok_path, os.path.join(hf_dir, tokenizer_lib.FILENAME))  # byte for byte
  side = os.path.join(workdir, HF_DIR)
  for name in sorted(os.listdir(side)) if os.path.isdir(side) else ():
    if name != "config.json":  # the imported tokenizer files replace the generated ones
      shutil.copyfile(os.path.join(side, name), os.path.join(hf_dir, name))
  return {"hf_dir": hf_dir, "model": "mixtral" if model_cfg.moe.enabled else "llama",
          "params": count_params(model_cfg)["total"], "files": sorted(os.listdir(hf_dir))}
