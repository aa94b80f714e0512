"""Cooldown branches: a new run that starts from another run's checkpoint (train.init_from).

A warmup-stable-decay study (Hagele et al. 2024) trains one stable run per model size and, for
each token budget, branches a short cooldown from the stable checkpoint at that budget's
decay start. The branch is a new workdir whose train.init_from = "PARENT:STEP": at its first start
it takes the parent's parameters, optimizer state (Adam's moments and the schedule's step count),
PRNG key and data-iterator position at STEP, and the parent's tokenizer, then trains on from STEP
under its own train.* settings (its own schedule: the decay). Its config.json records the parent
as {"parent": {"workdir": absolute path, "step": STEP}}. Once the branch has checkpoints of its
own it resumes them like any run, and train.init_from is ignored.

train/loop.py calls start() before anything compiles (the checks, one line each) and restore()
where a run restores its state.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Optional

import jax
import ml_collections

from train import checkpoint as ckpt_lib
from train import config as config_lib
from train import files
from train.data import tokenizer as tokenizer_lib

# Besides the shape (config_lib.FROZEN_KEYS): the iterator position counts batches of this size.
BRANCH_KEYS = ("train.batch_size",)


@dataclasses.dataclass(frozen=True)
class Parent:
  """The run a branch starts from: its workdir (absolute) and the step of the checkpoint."""

  workdir: str
  step: int


def _get(d: dict, dotted: str) -> Any:
  for part in dotted.split("."):
    d = d.get(part, {}) if isinstance(d, dict) else None
  return d


def _checkpoints(workdir: str) -> str:
  return os.path.join(workdir, "checkpoints")


def check_parent(workdir: str, config: ml_collections.ConfigDict,
                 t: config_lib.TrainSettings) -> Optional[Parent]:
  """The parent of a branch that has yet to start, checked: None without train.init_from, or when
  `workdir` has checkpoints of its own (it resumes them). Reads files only.

  Raises ConfigError in one line naming train.init_from: the parent holds no run, has no
  checkpoint at STEP (the saved steps named), or was trained with another model or data shape;
  or train.steps leaves nothing to train after STEP.
  """
  if not t.init_from or ckpt_lib.saved_steps(_checkpoints(workdir)):
    return None
  path, step = config_lib.parse_init_from(t.init_from)
  where = f"train.init_from={t.init_from!r}"
  saved = config_lib.read_saved(os.path.expanduser(path))
  if saved is None:
    raise config_lib.ConfigError(f"{where}: {path} holds no run (no config.json)")
  steps = ckpt_lib.saved_steps(_checkpoints(os.path.expanduser(path)))
  if step not in steps:
    raise config_lib.ConfigError(
        f"{where}: {path} has no checkpoint at step {step}; its saved steps: "
        f"{', '.join(map(str, steps)) or 'none'}")
  new = json.loads(config.to_json())
  diffs = config_lib.frozen_diffs(saved, config) + [
      f"{key}: saved {_get(saved, key)!r}, requested {_get(new, key)!r}"
      for key in BRANCH_KEYS if _get(saved, key) != _get(new, key)]
  if diffs:
    raise config_lib.ConfigError(
        f"{where}: the parent was trained with another shape ({'; '.join(diffs)}); branch with "
        "the parent's settings")
  if t.steps <= step:
    raise config_lib.ConfigError(
        f"train.steps={t.steps} leaves nothing to train after the branch's start, step {step} "
        "(train.init_from); raise train.steps")
  return Parent(os.path.abspath(os.path.expanduser(path)), step)


def start(workdir: str, config: ml_collections.ConfigDict,
          t: config_lib.TrainSettings) -> Optional[Parent]:
  """check_parent, then (process 0) the parent's tokenizer copied into the branch's workdir, so
  that its data are tokenized, and its token ids meant, as the parent's were."""
  parent = check_parent(workdir, config, t)
  if parent is not None and jax.process_index() == 0:
    tokenizer = os.path.join(parent.workdir, tokenizer_lib.FILENAME)
    if os.path.exists(tokenizer):
      os.makedirs(workdir, exist_ok=True)
      shutil.copyfile(tokenizer, os.path.join(workdir, tokenizer_lib.FILENAME))
  return parent


def record(workdir: str, parent: Parent) -> None:
  """Adds {"parent": {"workdir", "step"}} to the workdir's config.json (config_lib.save keeps it
  on every later start)."""
  saved = config_lib.read_saved(workdir) or {}
  saved["parent"] = {"workdir": parent.workdir, "step": parent.step}
  files.write_json_atomic(os.path.join(workdir, "config.json"), saved, indent=2)


def restore(ckpt: ckpt_lib.Checkpointer, abstract_state: Any, parent: Optional[Parent],
            workdir: str) -> Optional[tuple[int, Any, dict]]:
  """(step, state, data_state) to start from: the workdir's newest readable checkpoint, else the
  parent's at its step (recorded in config.json), else None (a fresh run).

  abstract_state: the run's TrainState of ShapeDtypeStructs with shardings; the parent's state is
  read onto it, whatever mesh or ZeRO stage the parent trained on.
  """
  found = ckpt.restore_latest(abstract_state)
  if found is not None or parent is None:
    return found
  state, data_state = ckpt_lib.read_step(_checkpoints(parent.workdir), parent.step, abstract_state)
  if jax.process_index() == 0:
    record(workdir, parent)
  return parent.step, state, data_state
