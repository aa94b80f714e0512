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


def load_params(workdir: str, mesh: Optional[jax.sharding.Mesh] = None):
  """(ModelConfig, graphdef, params) of the newest readable checkpoint in `workdir`, for
  inference and evaluation scripts, laid out as the run trained them.

  The parameters are restored sharded: on the run's own mesh and ZeRO stage (its config.json's
  `sharding`), or on `mesh` when given; parameters that layout keeps whole everywhere go to one
  device instead (every device would compute the same). A run's mesh that this machine's devices cannot form
  (a checkpoint of 64 devices read on 8) becomes the same stage over every device here. A
  function jitted over the returned params runs on those devices: a model that needed the mesh
  to train is sampled on it too. On one device all of this is the single-device layout.

  Raises FileNotFoundError naming the workdir when it holds no run or no checkpoint.
  """
  import json

  import ml_collections

  from model import transformer
  from model.config import ModelConfig
  from sharding import mesh as mesh_lib
  from sharding import zero
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

  sharding = config.get("sharding", ml_collections.ConfigDict())
  stage = sharding.get("zero_stage", 0)
  if mesh is None:
    try:
      mesh = mesh_lib.make_mesh(sharding.get("mesh", {"data": -1}))
    except mesh_lib.MeshError:  # the run's device count is not this machine's
      mesh = mesh_lib.make_mesh({"data": -1})
  abstract_state = jax.eval_shape(init_fn, jax.random.key(0))
  shardings = zero.state_shardings(abstract_state, stage, mesh).state
  if all(s.is_fully_replicated for s in jax.tree.leaves(shardings["params"])):
    # Parameters whole on every device: one device computes what all of them would.
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: one, shardings)
  abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)
  restored = Checkpointer(os.path.join(workdir, "checkpoints"), keep=10**6, every_steps=1)
  try:
    found = restored.restore_latest(abstract_state)
  finally:
    restored.close()
  if found is None:
    raise FileNotFoundError(f"{workdir}/checkpoints holds no readable checkpoint")
  return model_cfg, graphdef, found[1]["params"]
