"""The one training loop (run_steps) and what every run needs around it.

Pretraining (train/pretrain.py) and the alignment stages (train/align/stage.py) both step through
run_steps: a step's metrics are read back one step late, checkpoints are saved where the run's
Hooks say, a state with NaN or Inf is never saved (NonFiniteLoss), and SIGTERM / SIGINT finish
the current step, save and return normally. Also here: the batch as an array over every process's
devices (global_batch, rows_batch), and the checks of a run's mesh and memory before it compiles.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import signal
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from model.config import ModelConfig
from sharding import memory as memory_lib
from sharding import mesh as mesh_lib
from sharding import validate as validate_lib
from sharding import zero
from train import config as config_lib
from train.data import pipeline as data_lib
from train.data import shards as shards_lib
from train.state import ShardedTraining


class NonFiniteLoss(RuntimeError):
  """The loss, or the state about to be saved, became NaN or Inf; the last good checkpoint is
  left as it was."""


@jax.jit
def _state_is_finite(state: Any) -> jax.Array:
  """True when every float of params and opt_state is finite: one fused reduction to a scalar on
  the device, so checking before each save costs a read of the state and one bool."""
  floats = [x for x in jax.tree.leaves((state["params"], state["opt_state"]))
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in floats])) if floats else True


def check_finite_state(step: int, state: Any) -> None:
  """Raises NonFiniteLoss naming the step when params or opt_state hold NaN or Inf.

  A finite loss does not prove a finite state: the loss of step N is computed before step N's
  update, so an update that overflows would otherwise be saved as the newest checkpoint, and
  every resume would start from it.
  """
  if not bool(_state_is_finite(state)):
    raise NonFiniteLoss(
        f"parameters or optimizer state are NaN or Inf after step {step}; stopped without saving "
        "it, the newest checkpoint is the last good one. Lower train.lr or check train.grad_clip")


class StopFlag:
  """Set by SIGTERM / SIGINT; a training loop saves and returns at the next step boundary
  (this one and train/align/stage.py)."""

  def __init__(self):
    self.signum: Optional[int] = None
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    self.signum = signum

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def _global_array(global_BxF: np.ndarray, named_sharding: NamedSharding) -> jax.Array:
  lo, hi = local_rows(named_sharding, global_BxF.shape)
  return jax.make_array_from_process_local_data(named_sharding, global_BxF[lo:hi], global_BxF.shape)


def local_rows(named_sharding: NamedSharding, shape: tuple[int, ...]) -> tuple[int, int]:
  """[lo, hi): the rows of a global batch of `shape` that this process's devices hold."""
  devices_indices = named_sharding.addressable_devices_indices_map(shape)
  return data_lib.row_range(devices_indices.values(), shape[0])


def global_batch(batch: Any, batch_sharding: Any) -> Any:
  """The batch (a tree of host arrays, rows first) as arrays over all processes' devices; this
  process feeds only its own rows. batch_sharding: one NamedSharding for every leaf, or a tree
  of them.

  Every process holds the same global batch here (a deterministic function of the step);
  pretraining, whose batches are large, reads only its own rows instead (rows_batch).
  """
  if isinstance(batch_sharding, NamedSharding):
    return jax.tree.map(lambda x: _global_array(np.asarray(x), batch_sharding), batch)
  return jax.tree.map(lambda x, s: _global_array(np.asarray(x), s), batch, batch_sharding)


def rows_batch(rows: shards_lib.Rows, ids_B: np.ndarray,
               named_sharding: NamedSharding) -> jax.Array:
  """The (B, L+1) batch of rows ids_B as one array over all processes' devices. ids_B is the same
  on every process; each reads from the shards only the rows its own devices hold."""
  shape = (len(ids_B), rows.row_len)
  lo, hi = local_rows(named_sharding, shape)
  return jax.make_array_from_process_local_data(named_sharding, rows.read(ids_B[lo:hi]), shape)


def _any_process(flag: bool) -> bool:
  """True on every process if it is True on any: all stop at the same step (their collectives
  would otherwise wait for each other forever)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))


@dataclasses.dataclass(frozen=True)
class Hooks:
  """What a run does around its train steps (run_steps); every process calls each of them."""

  # (step, metrics, state) -> record: reads the step's metrics back, logs them, evaluates when
  # due; raises NonFiniteLoss.
  report: Callable[[int, Any, Any], dict]
  # (step, state, stopped_early) -> None: writes a checkpoint.
  save: Callable[[int, Any, bool], None]
  must_save: Callable[[int], bool]
  # Report this step at once (an evaluation or a save must see it), not one step late.
  read_now: Callable[[int], bool] = lambda step: False
  # (record of a step reported at once) -> end the run there (SFT's target accuracy).
  stop_when: Callable[[dict], bool] = lambda record: False
  # () -> whether a time-based temporary checkpoint is due (checkpoint.every_minutes); it is
  # written, by save_temporary(step, state), at a step that saves nothing else.
  temporary_due: Callable[[], bool] = lambda: False
  save_temporary: Callable[[int, Any], None] = lambda step, state: None
  # () -> None once the save still being written in the background, if any, is on disk; run_steps
  # returns only then, so a run stopped by a signal has saved when it says so.
  wait_saved: Callable[[], None] = lambda: None


@dataclasses.dataclass(frozen=True)
class Profile:
  """Trace steps first to last (the loop's step numbers, from 1) with the JAX profiler into
  logdir: a TensorBoard profile directory with a Perfetto trace beside it."""

  first: int
  last: int
  logdir: str

  def __post_init__(self):
    if not 1 <= self.first <= self.last:
      raise ValueError(f"profile steps {self.first}:{self.last}: expected 1 <= first <= last")


def profile_in(workdir: str, steps: Optional[tuple[int, int]]) -> Optional[Profile]:
  """Steps (first, last) traced into <workdir>/profile; None when steps is None."""
  return None if steps is None else Profile(*steps, os.path.join(workdir, "profile"))


class Tracer:
  """run_steps' use of a Profile: the trace started before the first step in the range and
  stopped once the last one has finished (or the loop ends), saying where it went. A range
  outside the steps this invocation runs (start, last] is one warning line at the start: the
  trace would otherwise be silently missing."""

  def __init__(self, profile: Optional[Profile], start: int, last: int):
    self.profile, self.tracing, self.first = profile, False, 0
    if profile and not (profile.first <= last and profile.last > start):
      _say(f"warning: --profile_steps={profile.first}:{profile.last} is outside the steps "
           f"this run takes ({start + 1} to {last}); nothing is traced")

  def before(self, step: int) -> None:
    """Before step `step` (counted from 1) is dispatched."""
    p = self.profile
    if p and not self.tracing and p.first <= step <= p.last:
      jax.profiler.start_trace(p.logdir)
      self.tracing, self.first = True, step

  def after(self, step: int, outputs: Any) -> None:
    """After step `step` was dispatched with these outputs: the trace ends at the range's end."""
    if self.tracing and step >= self.profile.last:
      jax.block_until_ready(outputs)  # the trace holds the whole of the last step
      self.stop(step)

  def stop(self, step: int) -> None:
    """Ends a trace still running (the loop stopped, or failed, inside the range: keep it)."""
    if not self.tracing:
      return
    jax.profiler.stop_trace()
    self.tracing = False
    runs = sorted(glob.glob(os.path.join(self.profile.logdir, "plugins", "profile", "*")))
    where = runs[-1] if runs else self.profile.logdir
    _say(f"profile: steps {self.first} to {step} traced into {where} (open its *.trace.json.gz "
         "at ui.perfetto.dev, or run tensorboard --logdir "
         f"{self.profile.logdir} with the `profile` extra)")


def _say(line: str) -> None:
  if jax.process_index() == 0:
    print(line, flush=True)


def run_steps(state: Any, start: int, last: int, train_step: Callable[[int, Any], tuple[Any, Any]],
              hooks: Hooks, profile: Optional[Profile] = None,
              ) -> tuple[Any, int, Optional[str], bool]:
  """The one training loop: train_step(step index, state) -> (state, metrics) from `start` until
  `last`. Returns (state, final step, what stopped it early: a signal's name, "another process"
  or None, whether hooks.stop_when did).

  A step's metrics are reported one step late, so that the device is never idle while the host
  reads them, unless hooks.read_now says now. A checkpoint is saved where hooks.must_save says, at
  the last step, on an early stop, and at the step boundary after SIGTERM / SIGINT on any process
  (all processes stop at the same step); a temporary one where hooks.temporary_due says, at any
  other step. A state with NaN or Inf is never saved: NonFiniteLoss. A save written in the
  background is on disk before this returns (hooks.wait_saved); on an error the caller's close
  of its checkpointer awaits it.
  profile: the steps of it that run here are traced (a resumed run's trace starts at its first
  step when that is inside the range); the trace ends once the last traced step has finished.
  """
  pending = None  # (step, metrics) dispatched but not yet reported
  step, signalled, early = start, None, False
  tracer = Tracer(profile, start, last)
  with StopFlag() as stop:
    try:
      while step < last and signalled is None and not early:
        tracer.before(step + 1)
        state, metrics = train_step(step, state)
        step += 1
        tracer.after(step, (state, metrics))
        if pending is not None:
          hooks.report(*pending, state)
        pending = (step, metrics)
        if _any_process(stop.signum is not None):
          signalled = (signal.Signals(stop.signum).name if stop.signum is not None
                       else "another process")
        must_save = hooks.must_save(step) or step == last or signalled is not None
        temporary = not must_save and hooks.temporary_due()
        if must_save or temporary or hooks.read_now(step):
          early = bool(hooks.stop_when(hooks.report(*pending, state)))
          pending = None
        if must_save or early:
          check_finite_state(step, state)
          hooks.save(step, state, early)
        elif temporary:
          check_finite_state(step, state)
          hooks.save_temporary(step, state)
      if pending is not None:
        hooks.report(*pending, state)
      hooks.wait_saved()
    finally:
      tracer.stop(step)
  return state, step, signalled, early


def validate_sharding(train_settings: config_lib.TrainSettings,
                      sharding_settings: config_lib.ShardingSettings, model_cfg: ModelConfig,
                      mesh: Mesh, *, batch_size: Optional[int] = None) -> None:
  """sharding/validate.py's checks for this run; one-line MeshError before anything compiles.
  batch_size: the rows of one step's batch where that is not train.batch_size (GRPO's)."""
  validate_lib.check_all(
      mesh_shape=dict(mesh.shape), batch_size=batch_size or train_settings.batch_size,
      grad_accum=train_settings.grad_accum, zero_stage=sharding_settings.zero_stage,
      d_model=model_cfg.d_model, n_heads=model_cfg.n_heads, n_kv_heads=model_cfg.n_kv_heads,
      d_ff=model_cfg.d_ff, n_experts=model_cfg.moe.n_experts or None)


def check_memory(sharding_settings: config_lib.ShardingSettings,
                 build: Callable[[int], ShardedTraining], abstract_batch: Any) -> Optional[str]:
  """sharding.device_memory_gb against the compiled step's peak bytes per device (0: no check).

  build(stage) -> the run's ShardedTraining at that ZeRO stage; abstract_batch: one step's batch
  as ShapeDtypeStructs. Compiles the step (at higher stages too when it does not fit) and raises
  MeshError with one line when it does not fit; pretraining calls it before any data is read or
  any file is written. Returns the verdict of a check that passed, one line; None when off.
  """
  budget = float(sharding_settings.device_memory_gb)
  if budget <= 0:
    return None
  stage = sharding_settings.zero_stage

  built = {stage: build(stage)}  # the run's own stage; the others only when it does not fit

  def need_at(s: int) -> int:
    training = built[s] if s in built else build(s)
    batch = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                         abstract_batch, training.batch_sharding)
    compiled = training.train_step.lower(training.abstract_state, batch).compile()
    return memory_lib.step_bytes(compiled)

  own = built[stage]
  need = memory_lib.preflight(
      need_at, stage, budget, n_devices=mesh_lib.data_parallel_size(own.mesh),
      state_bytes=sum(zero.unpartitioned_bytes(own.abstract_state).values()))
  return (f"memory pre-flight passed: the train step needs {need / memory_lib.GB:.3g} GB per "
          f"device at sharding.zero_stage={stage}, within sharding.device_memory_gb={budget:g}")
