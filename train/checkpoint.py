"""Checkpoints with orbax: train state plus the data iterator's position, restored exactly.

Saves are asynchronous by default (checkpoint.async_save): save() returns once the state has been
copied off the devices, and orbax writes it in a background thread while training goes on. A save
still in flight is awaited before the next save, at the end of the run (wait(), close()) and on
an error exit (close()). Saves are atomic either way: orbax writes to `<step>.orbax-checkpoint-tmp`
and renames it to `<step>` once every file is written, and only such complete directories are
listed, so a process killed mid-save (kill -9 during an asynchronous write too) resumes from the
previous checkpoint. A write that fails (disk full, file too large, read-only file system) ends
the run with CheckpointWriteError, one line naming the file and the errno; its temporary
directory is removed and the previous checkpoint stays the newest.

Besides the permanent checkpoints (checkpoint.every_steps, rotated by keep and keep_steps), a run
with checkpoint.every_minutes > 0 writes a temporary one to `checkpoints/temp/` whenever that long
has passed since the last save of either kind; only the newest temporary one is kept (the older
is removed once the newer is committed). A resume takes the newest readable of both.

On restore, the newest readable checkpoint wins: an unreadable one (a file truncated or missing)
is tried once more (a read can fail transiently on a network file system), then reported in one
line naming the file and the error, moved aside to `checkpoints/unreadable-<step>-<time>` and
skipped; nothing readable is ever deleted. What orbax and tensorstore say while failing (log
lines, tracebacks from their threads, saves' included) goes to `<workdir>/restore.log`, beside
checkpoints/, not to the terminal.

A run whose checkpoints are all unreadable is not silently started over: UnreadableCheckpoints,
unless checkpoint.restart_if_unreadable is set.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
import time
import traceback
from typing import Any, Iterator, Optional, TextIO

import jax
import orbax.checkpoint as ocp

from train import checkpoint_errors as errors
from train import config as config_lib
from train.checkpoint_errors import UnreadableCheckpoints

RESTORE_LOG = "restore.log"
RETRY_AFTER_S = 0.5
TEMP_DIR = "temp"  # checkpoints/temp: the time-based temporary checkpoints
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's name for a checkpoint still being written
_clock = time.monotonic  # what checkpoint.every_minutes is measured with (tests move it forward)


def _preservation(keep: int, keep_steps: tuple[int, ...]):
  """Orbax's rule for which checkpoints survive a save: the newest `keep`, and every step of
  keep_steps (a checkpoint either rule keeps is kept)."""
  policies = [ocp.checkpoint_managers.LatestN(n=keep)]
  if keep_steps:
    policies.append(ocp.checkpoint_managers.CustomSteps(steps=list(keep_steps)))
  return ocp.checkpoint_managers.AnyPreservationPolicy(policies)


class Checkpointer:
  """A thin shell around ocp.CheckpointManager for {'state': pytree, 'data': json}: permanent
  checkpoints in `directory`, temporary ones (every_minutes) in `directory`/temp.

  restart_if_unreadable: when every checkpoint in the directory is unreadable, start over
  (restore_latest returns None) instead of raising UnreadableCheckpoints.
  keep_steps: steps kept besides the newest `keep` (checkpoint.keep_steps).
  async_save: save() returns once the state is off the devices and the write goes on in the
  background (False: once it is on disk).
  every_minutes: a temporary checkpoint is due (temporary_due) this long after the last save;
  0 = never.
  owner: this process runs the training of `directory`: leftovers of its own saves cut short
  (temporary directories) are removed when it starts. Readers of a run that may be training
  (load_params) pass False.
  """

  def __init__(self, directory: str, *, keep: int, every_steps: int,
               restart_if_unreadable: bool = False, keep_steps: tuple[int, ...] = (),
               async_save: bool = True, every_minutes: float = 0.0, owner: bool = True):
    self.directory = os.path.abspath(directory)
    os.makedirs(self.directory, exist_ok=True)
    self.log_path = os.path.join(os.path.dirname(self.directory), RESTORE_LOG)
    self.restart_if_unreadable = restart_if_unreadable
    self.every_steps, self.every_minutes = every_steps, float(every_minutes)
    self.async_save, self.owner = async_save, owner
    self._log_filter = errors.OrbaxLogToFile(self.log_path)
    logging.getLogger("absl").addFilter(self._log_filter)
    if owner:  # a save that fails leaves tensorstore's threads reporting to a closed loop
      errors.LateNoiseToLog.install(self.log_path)
    self.manager = self._open(self.directory, _preservation(keep, keep_steps))
    temp_dir = os.path.join(self.directory, TEMP_DIR)
    self.temp_manager = None  # opened where temporaries are written or a resume may find one
    if self.every_minutes > 0 or os.path.isdir(temp_dir):
      self.temp_manager = self._open(temp_dir, ocp.checkpoint_managers.LatestN(n=1))
    self._in_flight: Optional[tuple[ocp.CheckpointManager, int]] = None
    self._last_save = _clock()

  def _open(self, directory: str, policy: Any) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=1, create=True, preservation_policy=policy,
        enable_async_checkpointing=self.async_save, cleanup_tmp_directories=self.owner)
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "data"))

  @classmethod
  def of(cls, directory: str,
         checkpoint_settings: config_lib.CheckpointSettings) -> "Checkpointer":
    """From the checkpoint.* section."""
    return cls(directory, keep=checkpoint_settings.keep,
               every_steps=checkpoint_settings.every_steps,
               restart_if_unreadable=checkpoint_settings.restart_if_unreadable,
               keep_steps=checkpoint_settings.keep_steps,
               async_save=checkpoint_settings.async_save,
               every_minutes=checkpoint_settings.every_minutes)

  def _managers(self) -> list[ocp.CheckpointManager]:
    return [self.manager] + ([self.temp_manager] if self.temp_manager is not None else [])

  def steps(self) -> list[int]:
    """The committed checkpoints' steps, permanent and temporary (a save in flight is not one)."""
    return sorted({s for m in self._managers() for s in m.all_steps()})

  def temporary_steps(self) -> list[int]:
    return sorted(self.temp_manager.all_steps()) if self.temp_manager is not None else []

  def temporary_due(self) -> bool:
    """Whether checkpoint.every_minutes have passed since the last save (or the start)."""
    return self.every_minutes > 0 and _clock() - self._last_save >= 60.0 * self.every_minutes

  def save(self, step: int, state: Any, data_state: dict, *, temporary: bool = False) -> None:
    """Saves `step`: permanent, or temporary (in temp/, replacing the older temporary one once
    it is committed). Awaits the save in flight first; with async_save, returns before the
    write is done. errors.CheckpointWriteError, one line, when this save or the one before failed."""
    if temporary and self.temp_manager is None:
      raise ValueError("a temporary checkpoint needs checkpoint.every_minutes > 0")
    manager = self.temp_manager if temporary else self.manager
    self.wait()
    self._last_save = _clock()
    if step in self.steps():
      return
    self._in_flight = (manager, step)
    with self._write_errors():
      manager.save(
          step, force=True, args=ocp.args.Composite(
              state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))
      if not self.async_save:
        manager.wait_until_finished()
        self._in_flight = None

  def wait(self) -> None:
    """Returns once the save in flight, if any, is committed; errors.CheckpointWriteError if it failed."""
    if self._in_flight is None:
      return
    with self._write_errors():
      self._in_flight[0].wait_until_finished()
    self._in_flight = None

  @contextlib.contextmanager
  def _write_errors(self) -> Iterator[None]:
    """Turns a failed write of the save in flight into errors.CheckpointWriteError, after removing
    what it left (orbax's temporary directory); the traceback goes to the log."""
    try:
      yield
    except Exception as e:  # noqa: BLE001 - whatever orbax or tensorstore raise, the save failed
      manager, step = self._in_flight
      self._in_flight = None
      raise self._write_failed(manager, step, e) from None

  def _write_failed(self, manager: ocp.CheckpointManager, step: int,
                    error: BaseException) -> errors.CheckpointWriteError:
    with open(self.log_path, "a", encoding="utf-8") as f:
      f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} saving step {step} failed:\n")
      traceback.print_exception(error, file=f)
    step_dir = os.path.join(str(manager.directory), str(step))
    if jax.process_index() == 0:
      for leftover in glob.glob(glob.escape(step_dir) + TMP_SUFFIX + "*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for m in self._managers():
      m.reload()  # orbax forgot the steps this save would have rotated out; they are still there
    newest = max(self.steps(), default=None)
    kept = f"the newest checkpoint is still step {newest}" if newest is not None else \
        "no checkpoint was written before it"
    return errors.CheckpointWriteError(
        f"could not write checkpoint {step_dir}: {errors.write_error_text(error, self.directory)}; "
        f"nothing of it was kept, {kept} (details in {self.log_path})")

  def _restore(self, step: int, abstract_state: Any,
               manager: Optional[ocp.CheckpointManager] = None) -> tuple[int, Any, dict]:
    restored = (manager or self.manager).restore(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return step, restored["state"], restored["data"]

  def unreadable(self) -> list[str]:
    """The checkpoints earlier restores moved aside (temporary ones as temp/NAME), oldest step
    first."""
    names = [n for n in os.listdir(self.directory) if n.startswith("unreadable-")]
    if self.temp_manager is not None:
      temp_dir = os.path.join(self.directory, TEMP_DIR)
      names += [os.path.join(TEMP_DIR, n) for n in os.listdir(temp_dir)
                if n.startswith("unreadable-")]
    return sorted(names, key=lambda n: [int(x) for x in os.path.basename(n).split("-")[1:]
                                        if x.isdigit()])

  def _candidates(self) -> list[tuple[int, ocp.CheckpointManager]]:
    """Every committed checkpoint as (step, its manager), newest first; a permanent one before
    a temporary one of the same step."""
    found = [(s, 1, self.manager) for s in self.manager.all_steps()]
    if self.temp_manager is not None:
      found += [(s, 0, self.temp_manager) for s in self.temp_manager.all_steps()]
    return [(s, m) for s, _, m in sorted(found, key=lambda c: (c[0], c[1]), reverse=True)]

  def _try_restore(self, step: int, manager: ocp.CheckpointManager, abstract_state: Any,
                   out: TextIO) -> tuple[Optional[tuple[int, Any, dict]], Optional[Exception]]:
    """(restored, None), or (None, the error) after two failed reads, both logged to `out`."""
    path = os.path.join(str(manager.directory), str(step))
    error = None
    for attempt in (1, 2):  # a transient read error gets a second chance
      try:
        return self._restore(step, abstract_state, manager), None
      except Exception as e:  # noqa: BLE001 - any failure to read means "unreadable"
        error = e
        out.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} restoring {path}, attempt "
                  f"{attempt}, failed:\n")
        traceback.print_exception(e, file=out)
        out.flush()
        if attempt == 1:
          time.sleep(RETRY_AFTER_S)
          manager.reload()
    return None, error

  def restore_latest(self, abstract_state: Any) -> Optional[tuple[int, Any, dict]]:
    """(step, state, data_state) from the newest readable checkpoint, permanent or temporary,
    or None if there is none.

    abstract_state: a tree of jax.ShapeDtypeStruct with shardings, the layout to restore onto.
    Raises UnreadableCheckpoints, listing them, when checkpoints exist (or were moved aside by an
    earlier restore) but none is readable, unless restart_if_unreadable.
    """
    for step, manager in self._candidates():
      path = os.path.join(str(manager.directory), str(step))
      with errors.output_to(self.log_path) as out:
        restored, error = self._try_restore(step, manager, abstract_state, out)
        if restored is not None:
          return restored
        culprit = errors.unreadable_file(path, error)
        aside = os.path.join(str(manager.directory), f"unreadable-{step}-{int(time.time())}")
        if jax.process_index() == 0 and os.path.exists(path):
          os.rename(path, aside)  # keep it for inspection; the step can be written again
        manager.reload()
      errors.LateNoiseToLog.install(self.log_path)
      what = f"file {culprit}: {errors.short(error)}" if culprit else f"no file named, {errors.short(error)}"
      print(f"WARNING: checkpoint {path} is unreadable ({what}); moved aside to {aside}, trying "
            f"an older one; details in {self.log_path}", flush=True)
    return self._none_readable()

  def _none_readable(self) -> None:
    aside = self.unreadable()
    if aside and not self.restart_if_unreadable:
      raise UnreadableCheckpoints(
          f"{self.directory} holds no readable checkpoint, only {', '.join(aside)} (details in "
          f"{self.log_path}); to start this run over, set "
          "--config.checkpoint.restart_if_unreadable=True")
    return None

  def close(self) -> None:
    """Awaits the save in flight (errors.CheckpointWriteError if it failed) and closes the managers."""
    try:
      self.wait()
    finally:
      for m in self._managers():
        m.close()
      logging.getLogger("absl").removeFilter(self._log_filter)


def _read_only(directory: str) -> ocp.CheckpointManager:
  """A manager that reads another run's checkpoints and never writes, deletes or cleans up
  anything there (that run may still be training)."""
  return ocp.CheckpointManager(
      os.path.abspath(directory), item_names=("state", "data"),
      options=ocp.CheckpointManagerOptions(read_only=True, create=False))


def _holding(directory: str, step: Optional[int] = None) -> list[str]:
  """`directory` and its temp/ where they exist; with `step`, only those holding that step."""
  found = [d for d in (directory, os.path.join(directory, TEMP_DIR)) if os.path.isdir(d)]
  return [d for d in found if step is None or os.path.isdir(os.path.join(d, str(step)))]


def saved_steps(directory: str) -> list[int]:
  """The steps of the complete checkpoints in `directory`, permanent and temporary (none when
  it does not exist)."""
  steps = set()
  for d in _holding(directory):
    manager = _read_only(d)
    try:
      steps.update(manager.all_steps())
    finally:
      manager.close()
  return sorted(steps)


def read_step(directory: str, step: int, abstract_state: Any) -> tuple[Any, dict]:
  """(state, data_state) of the checkpoint at `step` in another run's `directory` (a permanent
  one, else a temporary one), laid out as abstract_state says; read only (an unreadable one is
  an error, never moved aside)."""
  manager = _read_only((_holding(directory, step) or [directory])[0])
  try:
    restored = manager.restore(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
  finally:
    manager.close()
  return restored["state"], restored["data"]


def load_params(workdir: str, mesh: Optional[jax.sharding.Mesh] = None,
                step: Optional[int] = None):
  """(ModelConfig, graphdef, params) of the newest readable checkpoint in `workdir` (or of the
  one at `step`, permanent or temporary: a study scoring the step it chose), for inference and
  evaluation scripts, laid out as the run trained them.

  The parameters are restored sharded: on the run's own mesh and ZeRO stage (its config.json's
  `sharding`), or on `mesh` when given; parameters that layout keeps whole everywhere go to one
  device instead (every device would compute the same). A run's mesh that this machine's devices cannot form
  (a checkpoint of 64 devices read on 8) becomes the same stage over every device here. A
  function jitted over the returned params runs on those devices: a model that needed the mesh
  to train is sampled on it too. On one device all of this is the single-device layout.

  Raises FileNotFoundError naming the workdir when it holds no run or no checkpoint (or none at
  `step`).
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir} has no config.json: train a run there first (experiments.train)")
  with open(path, encoding="utf-8") as f:
    saved = json.load(f)
  model_cfg, graphdef, abstract_state = _saved_run_layout(saved, mesh)
  directory = f"{workdir}/checkpoints"
  if step is not None:
    if step not in saved_steps(directory):
      raise FileNotFoundError(f"{directory} holds no checkpoint at step {step} (it has "
                              f"{saved_steps(directory)})")
    state, _ = read_step(directory, step, abstract_state)
    return model_cfg, graphdef, state["params"]
  checkpointer = Checkpointer(directory, keep=10**6, every_steps=1, owner=False)
  try:
    found = checkpointer.restore_latest(abstract_state)
  finally:
    checkpointer.close()
  if found is None:
    raise FileNotFoundError(f"{directory} holds no readable checkpoint")
  return model_cfg, graphdef, found[1]["params"]


def _saved_run_layout(saved: dict, mesh: Optional[jax.sharding.Mesh]):
  """(ModelConfig, graphdef, abstract train state with shardings) of a run's saved config.json
  (a dict): its mesh and ZeRO stage, or `mesh` when given (load_params says how)."""
  from model import transformer
  from model.config import ModelConfig
  from sharding import mesh as mesh_lib
  from sharding import zero
  from train import optimizer as optimizer_lib
  from train import step as step_lib

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
  return model_cfg, graphdef, abstract_state
