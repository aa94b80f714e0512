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
