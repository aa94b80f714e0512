"""The start-up banner of a training run: what it will do, and on which devices.

train/pretrain.py prints it once the mesh and the data are ready (a --dry_run prints it and
stops there), and so does every alignment stage (train/align/stage.py, stage_lines): the workdir,
the devices, the mesh with its -1 resolved, the ZeRO stage, the parameter count, the data (for
pretraining its sources and, once prepared, their tokens), where the run starts, the
learning-rate schedule and the memory pre-flight's verdict. One `name  value` line each, so an
8-device ZeRO-3 run reads differently from a 1-device one at a glance.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
from jax.sharding import Mesh

from model.config import ModelConfig, count_params
from sharding import mesh as mesh_lib
from train import config as config_lib
from train.data import pipeline as data_lib

# What ZeRO stage N does with the train state across the data-parallel devices (sharding/zero.py).
ZERO_STAGES = {
    0: "state replicated on each of",
    1: "optimizer state partitioned over",
    2: "optimizer state and gradients partitioned over",
    3: "parameters, gradients and optimizer state partitioned (FSDP) over",
}


def devices_text() -> str:
  """'8 x cpu (1 process)': the device count, their kind and the process count."""
  kinds = sorted({d.device_kind for d in jax.devices()})
  processes = jax.process_count()
  return (f"{jax.device_count()} x {', '.join(kinds)} "
          f"({processes} process{'es' if processes > 1 else ''})")


def resolved_record(mesh: Mesh) -> dict:
  """What a run ran on, for its config.json ("resolved", train/config.py save): the mesh's axis
  sizes with -1 resolved, and the devices' count, kind(s) and processes."""
  kinds = sorted({d.device_kind for d in jax.devices()})
  return {"mesh": {axis: int(size) for axis, size in mesh.shape.items()},
          "devices": {"count": jax.device_count(), "kind": ", ".join(kinds),
                      "processes": jax.process_count()}}


def mesh_text(mesh: Mesh, spec: dict) -> str:
  """The mesh's axis sizes after -1 is resolved, then the setting they came from."""
  sizes = " ".join(f"{axis}={size}" for axis, size in mesh.shape.items())
  asked = " ".join(f"{axis}={size}" for axis, size in spec.items())
  return f"{sizes} (sharding.mesh: {asked})"


def zero_text(stage: int, mesh: Mesh) -> str:
  return (f"stage {stage}: {ZERO_STAGES.get(stage, '?')} "
          f"{mesh_lib.data_parallel_size(mesh)} data-parallel devices")


def schedule_text(t: config_lib.TrainSettings) -> str:
  """The learning rate over the run, in the words of train/optimizer.py's schedule_for."""
  head = f"{t.schedule}, {t.steps} steps: linear warmup over {t.warmup_steps} steps to lr {t.lr:g}"
  if t.schedule == "wsd":
    return (f"{head}, held to step {t.decay_start}, then {t.decay_shape} decay to 0 at step "
            f"{t.steps}")
  if t.schedule == "constant":
    return f"{head}, then held"
  return f"{head}, then cosine to {t.lr / 10:g} at step {t.steps}"


def sources_text(data_settings: config_lib.DataSettings, files: Sequence[Sequence[str]]) -> str:
  """Each source (data_lib.sources_of) with its weight and file count; files: check_sources'."""
  parts = []
  for source, found in zip(data_lib.sources_of(data_settings), files):
    what = ", ".join(source.patterns) or "the standard library's Python source"
    weight = f" weight {source.weight:g}" if data_settings.sources else ""
    parts.append(f"{source.setting}{weight}: {what} ({len(found)} files)")
  return "; ".join(parts)


def params_text(model_cfg: ModelConfig) -> str:
  """'1,234,560 (1,200,000 without embeddings; 4 layers, d_model 128)', MoE's active count too."""
  counts = count_params(model_cfg)
  active = counts.get("active", counts["total"])
  moe = f", {active:,} active a token" if active != counts["total"] else ""
  return (f"{counts['total']:,} ({counts['non_embedding']:,} without embeddings{moe}; "
          f"{model_cfg.n_layers} layers, d_model {model_cfg.d_model})")


def start_text(start: int, branched_from: Optional[str] = None) -> str:
  """'starting fresh', 'resuming from step N' or 'branching from PATH at step N'."""
  if start == 0:
    return "starting fresh"
  if branched_from:
    return f"branching from {branched_from} at step {start}"
  return f"resuming from step {start}"


def memory_text(memory: Optional[str]) -> str:
  """check_memory's verdict without its 'memory ' prefix, or why there is none."""
  return (memory.removeprefix("memory ") if memory
          else "pre-flight off (sharding.device_memory_gb=0)")


def layout(title: str, rows: Sequence[tuple[str, str]]) -> list[str]:
  """The title, then one indented `name  value` line a row."""
  return [title] + [f"  {name:<9}{value}" for name, value in rows]


def run_rows(workdir: str, mesh: Mesh, sharding_settings: config_lib.ShardingSettings,
             model_cfg: ModelConfig) -> list[tuple[str, str]]:
  """The rows every banner starts with: where, on which devices and mesh, how big."""
  return [
      ("workdir", workdir),
      ("devices", devices_text()),
      ("mesh", mesh_text(mesh, sharding_settings.mesh)),
      ("zero", zero_text(sharding_settings.zero_stage, mesh)),
      ("params", params_text(model_cfg)),
  ]


def lines(run_settings: config_lib.RunSettings, workdir: str, mesh: Mesh, *,
          files: Sequence[Sequence[str]], start: str, memory: Optional[str],
          corpus: Optional[data_lib.Corpus] = None) -> list[str]:
  """The banner's lines. files: each source's files (data_lib.check_sources); start:
  start_text(); memory: check_memory's verdict (None: the check is off); corpus: the prepared
  data, for its token counts (None before it is prepared, as in a dry run)."""
  model_cfg, t, data_settings = run_settings.model, run_settings.train, run_settings.data
  sharding_settings = run_settings.sharding
  rows = [
      *run_rows(workdir, mesh, sharding_settings, model_cfg),
      ("data", f"{sources_text(data_settings, files)}; seq_len {data_settings.seq_len}, batch "
               f"{t.batch_size} ({t.batch_size * data_settings.seq_len:,} tokens a step)"),
  ]
  if corpus is not None:
    rows.append(("tokens", f"{corpus.n_train_tokens:,} for training, {corpus.val.n_rows:,} "
                           "validation rows"))
  rows += [
      ("start", start),
      ("schedule", schedule_text(t)),
      ("memory", memory_text(memory)),
  ]
  return layout("llmlab pretraining", rows)


def stage_lines(stage: str, workdir: str, mesh: Mesh, *, model_cfg: ModelConfig,
                train_settings: config_lib.TrainSettings,
                sharding_settings: config_lib.ShardingSettings, init: str, data: str,
                start: str, memory: Optional[str]) -> list[str]:
  """An alignment stage's banner: the rows of pretraining's, with `init` (what the policy starts
  from) and `data` (the stage's examples and held-out sets, in its own words) for the data
  sources."""
  rows = [
      *run_rows(workdir, mesh, sharding_settings, model_cfg),
      ("init", init),
      ("data", f"{data}; batch {train_settings.batch_size}"),
      ("start", start),
      ("schedule", schedule_text(train_settings)),
      ("memory", memory_text(memory)),
  ]
  return layout(f"llmlab {stage}", rows)


def show(banner_lines: Sequence[str]) -> None:
  """Prints the banner on process 0."""
  if jax.process_index() == 0:
    print("\n".join(banner_lines), flush=True)
