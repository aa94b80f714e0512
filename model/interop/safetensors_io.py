"""Reading and writing Hugging Face safetensors checkpoints with safetensors' numpy API.

Layouts (those of transformers' save_pretrained):
  single   model.safetensors
  sharded  model-00001-of-00003.safetensors, ... and model.safetensors.index.json, whose
           "weight_map" names the file of every tensor

bfloat16 tensors come back as numpy arrays of ml_dtypes.bfloat16 (the dtype jax uses), so they
convert to jax without a float32 detour. torch is never imported.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Optional

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy before safetensors looks it up)
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from model.interop.hf_config import InteropError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 2**30
_PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "consolidated.00.pth")


class SafetensorsReader:
  """The tensors of a checkpoint directory, read one at a time on request (memory-mapped)."""

  def __init__(self, directory: str):
    self.directory = directory
    self.file_of = _weight_map(directory)
    self._open: dict[str, object] = {}

  def names(self) -> set[str]:
    return set(self.file_of)

  def get(self, name: str) -> np.ndarray:
    filename = self.file_of[name]
    if filename not in self._open:
      path = os.path.join(self.directory, filename)
      if not os.path.exists(path):
        raise InteropError(f"{INDEX} names {filename!r} for {name!r}, but the file is missing")
      self._open[filename] = safe_open(path, framework="np")
    return self._open[filename].get_tensor(name)

  def close(self) -> None:
    self._open.clear()  # safe_open handles close when released

  def __enter__(self) -> "SafetensorsReader":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _weight_map(directory: str) -> dict[str, str]:
  """tensor name -> file name, from the index when there is one, else from the single file."""
  index = os.path.join(directory, INDEX)
  if os.path.exists(index):
    with open(index, encoding="utf-8") as f:
      weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
      raise InteropError(f"{index} has no weight_map")
    return dict(weight_map)
  files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
  if len(files) == 1:
    with safe_open(files[0], framework="np") as f:
      return {name: os.path.basename(files[0]) for name in f.keys()}
  if len(files) > 1:
    raise InteropError(
        f"{directory} holds {len(files)} .safetensors files but no {INDEX} to say which is which")
  pickled = [p for p in _PICKLED if os.path.exists(os.path.join(directory, p))]
  if pickled:
    raise InteropError(
        f"{directory} has only pickled weights ({pickled[0]}); llmlab reads safetensors: load it "
        "in transformers and save_pretrained() it again")
  raise InteropError(f"{directory} has no {SINGLE} nor {INDEX}")


def _shard(tensors: dict[str, np.ndarray], max_bytes: int) -> list[dict[str, np.ndarray]]:
  """Consecutive groups of tensors, each at most max_bytes unless one tensor alone is larger."""
  shards, current, size = [], {}, 0
  for name, w in tensors.items():
    if current and size + w.nbytes > max_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name] = w
    size += w.nbytes
  if current:
    shards.append(current)
  return shards


def write(directory: str, tensors: dict[str, np.ndarray],
          max_shard_bytes: Optional[int] = None) -> list[str]:
  """Writes tensors as one file, or as shards plus an index; returns the file names.

  Refuses a directory that already holds safetensors files: stale shards next to new ones would
  make a checkpoint that loads the wrong weights.
  """
  os.makedirs(directory, exist_ok=True)
  stale = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
  if stale or os.path.exists(os.path.join(directory, INDEX)):
    raise InteropError(f"{directory} already holds a checkpoint; write to a new directory")
  # transformers checks this metadata field when it loads a safetensors file.
  metadata = {"format": "pt"}
  shards = _shard(tensors, max_shard_bytes or DEFAULT_MAX_SHARD_BYTES)
  if len(shards) == 1:
    save_file(shards[0], os.path.join(directory, SINGLE), metadata=metadata)
    return [SINGLE]
  names, weight_map = [], {}
  for k, shard in enumerate(shards, 1):
    filename = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, os.path.join(directory, filename), metadata=metadata)
    weight_map.update({name: filename for name in shard})
    names.append(filename)
  index = {"metadata": {"total_size": sum(w.nbytes for w in tensors.values())},
           "weight_map": weight_map}
  with open(os.path.join(directory, INDEX), "w", encoding="utf-8") as f:
    json.dump(index, f, indent=2)
  return names + [INDEX]
