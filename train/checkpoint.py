"""Checkpoints with orbax: train state plus the data iterator's position, restored exactly.

Saves are atomic (orbax writes to a temporary directory and renames it when complete), so a
process killed mid-save leaves the previous checkpoints intact. On restore, the newest readable
checkpoint wins: an unreadable one (a file truncated or missing) is reported, moved aside to
`checkpoints/unreadable-<step>` and skipped; nothing readable is ever deleted.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
  """A thin shell around ocp.CheckpointManager for {'state': pytree, 'data': json}."""

  def __init__(self, directory: str, *, keep: int, every_steps: int):
    self.directory = os.path.abspath(directory)
    os.makedirs(self.directory, exist_ok=True)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=1, create=True,
        enable_async_checkpointing=False)  # a save is on disk when save() returns
    self.every_steps = every_steps
    self.manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "data"))

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict) -> None:
    if step in self.manager.all_steps():
      return
    self.manager.save(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))
    self.manager.wait_until_finished()

  def restore_latest(self, abstract_state: Any) -> Optional[tuple[int, Any, dict]]:
    """(step, state, data_state) from the newest readable checkpoint, or None if there is none.

    abstract_state: a tree of jax.ShapeDtypeStruct with shardings, the layout to restore onto.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self.manager.restore(
            step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return step, restored["state"], restored["data"]
      except Exception as e:  # noqa: BLE001 - any failure to read means "unreadable"
        path = os.path.join(self.directory, str(step))
        aside = os.path.join(self.directory, f"unreadable-{step}-{int(time.time())}")
        msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        log.warning("checkpoint %s is unreadable (%s); moved to %s, trying an older one",
                    path, msg, aside)
        print(f"WARNING: checkpoint {path} is unreadable ({msg}); moved aside to {aside}",
              flush=True)
        if jax.process_index() == 0 and os.path.exists(path):
          os.rename(path, aside)  # keep it for inspection; the step can be written again
        self.manager.reload()
    return None

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def load_params(workdir: str):
  """(ModelConfig, graphdef, params) of the newest readable checkpoint in `workdir`, on the
  default device, for inference and evaluation scripts.

  Raises FileNotFoundError naming the workdir when it holds no run or no checkpoint.
  """
  import json

  import ml_collections

  from model import transformer
  from model.config import ModelConfig
  from train import optimizer as optimizer_lib
  from train import step as step_lib

  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir} has no config.json: train a run there first (experiments.train)")
  with open(path, encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  model_cfg = ModelConfig.from_dict(config.model.to_dict())
  graphdef, _ = transformer.abstract(model_cfg)
  tx = optimizer_lib.make(config.train, config.train.steps)

  def init_fn(key):
    _, params = transformer.create(model_cfg, key)
    return step_lib.init_state(params, tx, config.train.seed)

  abstract_state = jax.eval_shape(init_fn, jax.random.key(0))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract_state = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract_state)
  restored = Checkpointer(os.path.join(workdir, "checkpoints"), keep=10**6, every_steps=1)
  try:
    found = restored.restore_latest(abstract_state)
  finally:
    restored.close()
  if found is None:
    raise FileNotFoundError(f"{workdir}/checkpoints holds no readable checkpoint")
  return model_cfg, graphdef, found[1]["params"]
