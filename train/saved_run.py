"""A trained run read back for decoding: its config, parameters in the decoding layout, tokenizer."""

from __future__ import annotations

import os

from model import transformer
from train import checkpoint
from train.data import tokenizer as tokenizer_lib


def load_run(workdir: str):
  """(ModelConfig, graphdef, params, tokenizer) of a run, or FileNotFoundError naming it.

  The parameters come in the decoding layout (transformer.unstack_layers: one buffer per layer).
  """
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"workdir {workdir} does not exist")
  tok = tokenizer_lib.load(workdir)
  cfg, _, params = checkpoint.load_params(workdir)
  cfg, graphdef, params = transformer.unstack_layers(cfg, params)
  return cfg, graphdef, params, tok
