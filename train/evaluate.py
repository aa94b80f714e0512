"""Loss and perplexity of a saved workdir on a corpus or on prepared shards, per source.

A workdir (trained here, or imported from Hugging Face by train/hf_workdir.py) is scored on rows
of data.seq_len + 1 tokens exactly as pretraining scores its validation rows: the same eval step
(train/pretrain.py make_evaluators, train/step.py loss_sums: packed documents isolated, padding
not counted), its parameters restored on the run's own mesh and ZeRO stage (train/checkpoint.py
load_params), the text tokenized with the workdir's tokenizer into shards
(train/data/pipeline.py prepare: made once, reused; the run's own corpus is never retokenized).

What is read: the run's own data.* (its config.json) unless data overrides are given, or the
shard folders of --shards; of each source its validation rows ("val", the documents the hash
split holds out) or all its rows ("all", train and validation: a corpus kept apart from training).
Which rows: every row once (batches=0, the last batch padded with rows that count nothing), the
first N batches, or RUN_ROWS, the very rows of the run's eval_loss (train.eval_batches batches,
the first half of the split when the run has train.test_batches), so that evaluating a run on its
own data reproduces its logged eval_loss. experiments.evaluate is the command line.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping, Optional

import numpy as np

from model.config import ModelConfig
from train import checkpoint as ckpt_lib
from train import config as config_lib
from train import pretrain
from train.data import pipeline as data_lib
from train.data import shards as shards_lib
from train.data import tokenizer as tokenizer_lib

RUN_ROWS = -1  # batches=RUN_ROWS: the rows of the run's own eval_loss
SPLITS = ("val", "all")


@dataclasses.dataclass(frozen=True)
class SavedRun:
  """A workdir's recorded settings: model, data, train and sharding, read leniently (a saved
  config.json is a record; keys of other versions are ignored)."""

  workdir: str
  settings: config_lib.RunSettings
  tokenizer: Any


def read_run(workdir: str, data_overrides: Optional[Mapping[str, Any]] = None) -> SavedRun:
  """The workdir's settings, its data.* updated by data_overrides ({"paths": ...}); FileNotFoundError
  naming what is missing, ConfigError naming a bad data.* setting."""
  saved = config_lib.read_saved(workdir) if os.path.isdir(workdir) else None
  if saved is None:
    raise FileNotFoundError(f"{workdir} has no config.json: not a workdir (experiments.train, "
                            "experiments.convert)")
  if not os.path.exists(os.path.join(workdir, tokenizer_lib.FILENAME)):
    raise FileNotFoundError(f"{workdir} has no {tokenizer_lib.FILENAME}: its text cannot be "
                            "tokenized as it was trained")
  model_cfg = ModelConfig.from_dict(saved["model"])
  data = config_lib.DataSettings.from_config(
      {**saved.get("data", {}), **dict(data_overrides or {})}, strict=False)
  if data.seq_len > model_cfg.max_seq_len:
    raise config_lib.ConfigError(
        f"data.seq_len={data.seq_len} exceeds model.max_seq_len={model_cfg.max_seq_len} of "
        f"{workdir}; lower --data.seq_len")
  settings = config_lib.RunSettings(
      model=model_cfg, data=data,
      train=config_lib.TrainSettings.from_config(saved["train"], strict=False),
      checkpoint=config_lib.CheckpointSettings(),
      sharding=config_lib.ShardingSettings.from_config(saved.get("sharding", {}), strict=False))
  return SavedRun(workdir, settings, tokenizer_lib.load(workdir))


def open_shards(run: SavedRun, shards: str) -> data_lib.Prepared:
  """Prepared shard folders as sources: `shards` itself when it holds a manifest (one source
  folder), else each of its subfolders that does (a data.prepared root, one folder per source).
  DataError when there is none, or when one was made with another tokenizer than the run's."""
  shards = os.path.expanduser(shards)
  if not os.path.isdir(shards):
    raise data_lib.DataError(f"--shards={shards} is not a directory")
  folders = ([shards] if shards_lib.read_manifest(shards) is not None else
             [os.path.join(shards, d) for d in sorted(os.listdir(shards))
              if os.path.isdir(os.path.join(shards, d))
              and shards_lib.read_manifest(os.path.join(shards, d)) is not None])
  if not folders:
    raise data_lib.DataError(f"--shards={shards} holds no prepared shards (a folder with a "
                             f"{shards_lib.MANIFEST}, or folders of them)")
  manifests = [shards_lib.read_manifest(f) for f in folders]
  sha = shards_lib.tokenizer_sha256(run.tokenizer)
  for folder, manifest in zip(folders, manifests):
    if manifest["tokenizer_sha256"] != sha:
      raise data_lib.DataError(f"{folder} was tokenized with another tokenizer than "
                               f"{run.workdir}'s; prepare it with this run's tokenizer")
  sources = tuple(data_lib.Source(f"--shards {f}", tuple(m.get("source", {}).get("paths", ())))
                  for f, m in zip(folders, manifests))
  return data_lib.Prepared(run.tokenizer, sources, tuple(folders), tuple(manifests),
                           (False,) * len(folders))


def source_rows(prepared: data_lib.Prepared, seq_len: int, split: str) -> list[shards_lib.Rows]:
  """Each source's rows of the split, as pretraining opens them (data_lib.open_corpus: a source
  without validation rows holds out the tail of its training rows)."""
  if split not in SPLITS:
    raise config_lib.ConfigError(f"split={split!r} is unknown; allowed: {', '.join(SPLITS)}")
  out = []
  for i in range(len(prepared.sources)):
    one = dataclasses.replace(
        prepared, sources=prepared.sources[i:i + 1], folders=prepared.folders[i:i + 1],
        manifests=prepared.manifests[i:i + 1], written=prepared.written[i:i + 1])
    corpus = data_lib.open_corpus(one, seq_len, 1)
    rows = corpus.val if split == "val" else shards_lib.Rows.concat(corpus.train + (corpus.val,))
    if rows.n_rows == 0:
      raise data_lib.DataError(f"{one.sources[0].setting} has no validation row of data.seq_len+1="
                               f"{seq_len + 1} tokens; use split 'all' or a lower data.seq_len")
    out.append(rows)
  return out


def padded(rows: shards_lib.Rows, batch_size: int, pad_id: int) -> shards_lib.Rows:
  """rows, then rows of padding up to a whole number of batches: padding targets count nothing
  (train/step.py counted_targets), so every real row is scored once."""
  n_pad = -rows.n_rows % batch_size
  if not n_pad:
    return rows
  pad = np.full((n_pad * rows.row_len,), pad_id, np.int32)
  return shards_lib.Rows(rows.row_len, rows.pieces + ((pad, 0, n_pad),))


def _mesh(settings: config_lib.RunSettings):
  """The run's mesh, or every device here when this machine cannot form it (as load_params)."""
  from sharding import mesh as mesh_lib

  try:
    return pretrain.build_mesh(settings)
  except mesh_lib.MeshError:
    return mesh_lib.make_mesh({"data": -1})


class Scorer:
  """Mean loss per counted token of rows, with the run's parameters on the run's mesh and one
  compiled eval step (pretrain.make_evaluators) for every set of rows."""

  def __init__(self, run: SavedRun):
    import jax

    s, tok = run.settings, run.tokenizer
    self.t, self.mesh = s.train, _mesh(s)
    self.pad_id = tokenizer_lib.special_id(tok, tokenizer_lib.PAD)
    self.documents = tokenizer_lib.document_boundary(tok)
    self.answer_marker = pretrain.answer_marker_id(tok, s.train.answer_marker)
    self.training = pretrain.make_sharded_training(
        s.model, s.train, self.mesh, s.sharding.zero_stage, pad_id=self.pad_id,
        documents=self.documents, answer_marker=self.answer_marker)
    _, _, params = ckpt_lib.load_params(run.workdir, self.mesh)
    self.params = jax.device_put(params, self.training.shardings.params)
    self.tokenizer = tok
    self.model_cfg = s.model  # MoE layers score with model.moe.eval_dispatch, as pretraining's eval

  def loss(self, rows: shards_lib.Rows, batches: int) -> float:
    """Mean loss over the rows batches selects (module docstring: 0, N or RUN_ROWS)."""
    t = self.t
    if batches == RUN_ROWS:
      eval_settings = t
    else:
      if batches == 0:
        rows = padded(rows, t.batch_size, self.pad_id)
      n = batches or rows.n_rows // t.batch_size
      eval_settings = dataclasses.replace(t, eval_batches=max(n, 1), test_batches=0)
    corpus = data_lib.Corpus((rows,), (1.0,), rows, 0, 0.0)
    data = pretrain.PretrainData(corpus, self.tokenizer, self.pad_id, self.documents,
                                 self.answer_marker)
    evaluate, _ = pretrain.make_evaluators(self.training, data, eval_settings, self.model_cfg)
    return evaluate(self.params)["eval_loss"]


def _entry(loss: float, rows: shards_lib.Rows) -> dict[str, Any]:
  return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "rows": rows.n_rows}


def evaluate(workdir: str, *, data_overrides: Optional[Mapping[str, Any]] = None,
             shards: Optional[str] = None, split: str = "val", batches: int = 0,
             progress: bool = True) -> dict[str, Any]:
  """{"workdir", "step", "split", "batches", "loss", "perplexity", "rows", "sources"}: the
  loss over every source's rows one after another (as pretraining's eval_loss), and per source
  its own (a mixture's per-source losses; one source: the same numbers again).

  data_overrides: data.* settings replacing the run's own (paths, sources, text_field, prepared,
  seq_len); shards: prepared shard folders instead. Tokenized shards go where data.prepared says
  (default <workdir>/data, where the run's own already are).
  """
  if batches < RUN_ROWS:
    raise config_lib.ConfigError(f"batches={batches}: 0 (every row), N > 0 or {RUN_ROWS} (the "
                                 "run's eval rows)")
  run = read_run(workdir, data_overrides)
  if shards:
    prepared = open_shards(run, shards)
  else:
    data_lib.check_sources(run.settings.data)
    prepared = data_lib.prepare(workdir, run.settings.data, progress=progress)
  per_source = source_rows(prepared, run.settings.data.seq_len, split)
  scorer = Scorer(run)
  every = shards_lib.Rows.concat(per_source)
  result = {"workdir": workdir, "split": split, "batches": batches,
            "step": max(ckpt_lib.saved_steps(os.path.join(workdir, "checkpoints")), default=0),
            **_entry(scorer.loss(every, batches), every), "sources": []}
  for source, rows in zip(prepared.sources, per_source):
    entry = _entry(scorer.loss(rows, batches), rows) if len(per_source) > 1 else {
        k: result[k] for k in ("loss", "perplexity", "rows")}
    result["sources"].append({"source": source.setting, "paths": list(source.patterns), **entry})
  return result
