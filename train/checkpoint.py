"""Checkpoints with orbax: train state plus the data iterator's position, restored exactly.

Saves are atomic (orbax writes to a temporary directory and renames it when complete), so a
process killed mid-save leaves the previous checkpoints intact. On restore, the newest readable
checkpoint wins: an unreadable one (a file truncated or missing) is tried once more (a read can
fail transiently on a network file system), then reported in one line naming the file, moved
aside to `checkpoints/unreadable-<step>-<time>` and skipped; nothing readable is ever deleted.
What orbax and tensorstore say while failing (log lines, tracebacks from their threads) goes to
`<workdir>/restore.log`, beside checkpoints/, not to the terminal.

A run whose checkpoints are all unreadable is not silently started over: UnreadableCheckpoints,
unless checkpoint.restart_if_unreadable is set.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import sys
import time
import traceback
from typing import Any, Iterator, Optional, TextIO

import jax
import orbax.checkpoint as ocp

from train import config as config_lib

RESTORE_LOG = "restore.log"
RETRY_AFTER_S = 0.5


class UnreadableCheckpoints(ValueError):
  """Every checkpoint of a run is unreadable; starting over needs
  checkpoint.restart_if_unreadable."""


def _is_event_loop_noise(unraisable: Any) -> bool:
  return (isinstance(unraisable.exc_value, RuntimeError)
          and "Event loop is closed" in str(unraisable.exc_value))


class _LateNoiseToLog:
  """sys.unraisablehook for the rest of the process once a restore has failed: tensorstore's
  threads finish reads of the abandoned checkpoint after restore returned, and each reports
  'RuntimeError: Event loop is closed'. Those go to the log; anything else to the old hook."""

  def __init__(self, previous: Any, log_path: str):
    self.previous, self.log_path = previous, log_path

  def __call__(self, unraisable: Any) -> None:
    if not _is_event_loop_noise(unraisable):
      self.previous(unraisable)
      return
    with open(self.log_path, "a", encoding="utf-8") as f:
      f.write(f"(late, from orbax's threads) {unraisable.exc_value!r}\n")


@contextlib.contextmanager
def _output_to(path: str) -> Iterator[TextIO]:
  """Sends Python-level log records, stderr writes and unraisable exceptions (orbax and
  tensorstore's threads) to the file at `path` while the block runs."""
  with open(path, "a", encoding="utf-8") as f:
    handler = logging.StreamHandler(f)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_absl = logging.getLogger("absl").propagate
    saved_stderr, saved_hook = sys.stderr, sys.unraisablehook
    root.handlers, root.level = [handler], min(root.level, logging.INFO)
    logging.getLogger("absl").propagate = True
    sys.stderr = f

    def hook(unraisable):
      f.write(f"unraisable: {unraisable.exc_value!r}\n")
      traceback.print_exception(unraisable.exc_value, file=f)

    sys.unraisablehook = hook
    try:
      yield f
    finally:
      f.flush()
      root.handlers, root.level = saved_handlers, saved_level
      logging.getLogger("absl").propagate = saved_absl
      sys.stderr, sys.unraisablehook = saved_stderr, saved_hook
  if os.path.getsize(path) == 0:  # a restore that said nothing leaves no empty log behind
    os.remove(path)


def _error_text(error: BaseException) -> str:
  """The messages of an error and of the errors it came from."""
  parts, seen = [], set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    parts.append(str(error))
    error = error.__cause__ or error.__context__
  return "\n".join(parts)


def unreadable_file(step_dir: str, error: BaseException) -> Optional[str]:
  """The file of checkpoint `step_dir` that `error` failed on, relative to step_dir, or None.

  tensorstore names the file it could not read in its message; a metadata file cut short fails
  as JSON without a name, so the first JSON file of the checkpoint that does not parse is it.
  """
  text = _error_text(error)
  root = os.path.realpath(step_dir)
  named = [os.path.realpath(m) for m in re.findall(r'(/[^\s"\'<>]+)', text)]
  files = [p for p in named if p.startswith(root + os.sep) and os.path.isfile(p)]
  if files:
    return os.path.relpath(max(files, key=len), root)
  if isinstance(error, json.JSONDecodeError) or "JSON" in text:
    for path in sorted(glob.glob(os.path.join(root, "**"), recursive=True)):
      if not os.path.isfile(path) or os.path.getsize(path) > 1 << 20:
        continue
      with open(path, "rb") as f:
        head = f.read(1)
      if head not in (b"{", b"["):
        continue
      try:
        with open(path, encoding="utf-8") as f:
          json.load(f)
      except ValueError:
        return os.path.relpath(path, root)
  return None


def _preservation(keep: int, keep_steps: tuple[int, ...]):
  """Orbax's rule for which checkpoints survive a save: the newest `keep`, and every step of
  keep_steps (a checkpoint either rule keeps is kept)."""
  policies = [ocp.checkpoint_managers.LatestN(n=keep)]
  if keep_steps:
    policies.append(ocp.checkpoint_managers.CustomSteps(steps=list(keep_steps)))
  return ocp.checkpoint_managers.AnyPreservationPolicy(policies)


class Checkpointer:
  """A thin shell around ocp.CheckpointManager for {'state': pytree, 'data': json}.

  restart_if_unreadable: when every checkpoint in the directory is unreadable, start over
  (restore_latest returns None) instead of raising UnreadableCheckpoints.
  keep_steps: steps kept besides the newest `keep` (checkpoint.keep_steps).
  """

  def __init__(self, directory: str, *, keep: int, every_steps: int,
               restart_if_unreadable: bool = False, keep_steps: tuple[int, ...] = ()):
    self.directory = os.path.abspath(directory)
    os.makedirs(self.directory, exist_ok=True)
    self.log_path = os.path.join(os.path.dirname(self.directory), RESTORE_LOG)
    self.restart_if_unreadable = restart_if_unreadable
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=1, create=True, preservation_policy=_preservation(keep, keep_steps),
        enable_async_checkpointing=False)  # a save is on disk when save() returns
    self.every_steps = every_steps
    self.manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "data"))

  @classmethod
  def of(cls, directory: str,
         checkpoint_settings: config_lib.CheckpointSettings) -> "Checkpointer":
    """From the checkpoint.* section."""
    return cls(directory, keep=checkpoint_settings.keep,
               every_steps=checkpoint_settings.every_steps,
               restart_if_unreadable=checkpoint_settings.restart_if_unreadable,
               keep_steps=checkpoint_settings.keep_steps)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict) -> None:
    if step in self.manager.all_steps():
      return
    self.manager.save(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))
    self.manager.wait_until_finished()

  def _restore(self, step: int, abstract_state: Any) -> tuple[int, Any, dict]:
    restored = self.manager.restore(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return step, restored["state"], restored["data"]

  def unreadable(self) -> list[str]:
    """The checkpoints earlier restores moved aside, oldest step first."""
    names = [n for n in os.listdir(self.directory) if n.startswith("unreadable-")]
    return sorted(names, key=lambda n: [int(x) for x in n.split("-")[1:] if x.isdigit()])

  def restore_latest(self, abstract_state: Any) -> Optional[tuple[int, Any, dict]]:
    """(step, state, data_state) from the newest readable checkpoint, or None if there is none.

    abstract_state: a tree of jax.ShapeDtypeStruct with shardings, the layout to restore onto.
    Raises UnreadableCheckpoints, listing them, when checkpoints exist (or were moved aside by an
    earlier restore) but none is readable, unless restart_if_unreadable.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      path = os.path.join(self.directory, str(step))
      error = None
      with _output_to(self.log_path) as out:
        for attempt in (1, 2):  # a transient read error gets a second chance
          try:
            return self._restore(step, abstract_state)
          except Exception as e:  # noqa: BLE001 - any failure to read means "unreadable"
            error = e
            out.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} restoring {path}, attempt "
                      f"{attempt}, failed:\n")
            traceback.print_exception(e, file=out)
            out.flush()
            if attempt == 1:
              time.sleep(RETRY_AFTER_S)
              self.manager.reload()
        culprit = unreadable_file(path, error)
        aside = os.path.join(self.directory, f"unreadable-{step}-{int(time.time())}")
        if jax.process_index() == 0 and os.path.exists(path):
          os.rename(path, aside)  # keep it for inspection; the step can be written again
        self.manager.reload()
      if not isinstance(sys.unraisablehook, _LateNoiseToLog):
        sys.unraisablehook = _LateNoiseToLog(sys.unraisablehook, self.log_path)
      what = f"file {culprit}" if culprit else f"no file named, {type(error).__name__}"
      print(f"WARNING: checkpoint {path} is unreadable ({what}); moved aside to {aside}, trying "
            f"an older one; details in {self.log_path}", flush=True)
    aside = self.unreadable()
    if aside and not self.restart_if_unreadable:
      raise UnreadableCheckpoints(
          f"{self.directory} holds no readable checkpoint, only {', '.join(aside)} (details in "
          f"{self.log_path}); to start this run over, set "
          "--config.checkpoint.restart_if_unreadable=True")
    return None

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _read_only(directory: str) -> ocp.CheckpointManager:
  """A manager that reads another run's checkpoints and never writes, deletes or cleans up
  anything there (that run may still be training)."""
  return ocp.CheckpointManager(
      os.path.abspath(directory), item_names=("state", "data"),
      options=ocp.CheckpointManagerOptions(read_only=True, create=False))


def saved_steps(directory: str) -> list[int]:
  """The steps of the complete checkpoints in `directory` (none when it does not exist)."""
  if not os.path.isdir(directory):
    return []
  manager = _read_only(directory)
  try:
    return sorted(manager.all_steps())
  finally:
    manager.close()


def read_step(directory: str, step: int, abstract_state: Any) -> tuple[Any, dict]:
  """(state, data_state) of the checkpoint at `step` in another run's `directory`, laid out as
  abstract_state says; read only (an unreadable one is an error, never moved aside)."""
  manager = _read_only(directory)
  try:
    restored = manager.restore(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
  finally:
    manager.close()
  return restored["state"], restored["data"]


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
    saved = json.load(f)
  model_cfg = ModelConfig.from_dict(saved["model"])
  # A saved record, not a user's settings: keys of other versions are ignored, and what an older
  # workdir lacks (its whole sharding section, say) takes the dataclass's default.
  train_settings = config_lib.TrainSettings.from_config(saved["train"], strict=False)
  sharding_settings = config_lib.ShardingSettings.from_config(
      saved.get("sharding", {}), strict=False)
  graphdef, _ = transformer.abstract(model_cfg)
  tx = optimizer_lib.make(train_settings, train_settings.steps)

  def init_fn(key):
    _, params = transformer.create(model_cfg, key)
    return step_lib.init_state(params, tx, train_settings.seed)

  stage = sharding_settings.zero_stage
  if mesh is None:
    try:
      mesh = mesh_lib.make_mesh(sharding_settings.mesh)
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
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=10**6, every_steps=1)
  try:
    found = checkpointer.restore_latest(abstract_state)
  finally:
    checkpointer.close()
  if found is None:
    raise FileNotFoundError(f"{workdir}/checkpoints holds no readable checkpoint")
  return model_cfg, graphdef, found[1]["params"]
