"""train/checkpoint.py: a transient read error is retried, a run whose checkpoints are all
unreadable is never silently started over."""

import glob
import os

import jax
import jax.numpy as jnp
import pytest

from train import checkpoint as ckpt_lib

STATE = {"w": jnp.arange(4, dtype=jnp.float32)}


def _abstract():
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), STATE)


def _saved(directory, steps, **kwargs) -> ckpt_lib.Checkpointer:
  ckpt = ckpt_lib.Checkpointer(str(directory), keep=10, every_steps=1, **kwargs)
  for step in steps:
    ckpt.save(step, STATE, {"position": step})
  return ckpt


def _corrupt(step_dir) -> None:
  for f in glob.glob(os.path.join(step_dir, "**"), recursive=True):
    if os.path.isfile(f) and os.path.getsize(f) > 0:
      with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 3)


def test_transient_read_error_is_retried_once(tmp_path, monkeypatch):
  """Catches: one failed read (a network file system's hiccup) moving a good checkpoint aside
  and resuming from an older one."""
  monkeypatch.setattr(ckpt_lib, "RETRY_AFTER_S", 0.0)
  ckpt = _saved(tmp_path / "checkpoints", [1, 2])
  real, calls = ckpt._restore, []

  def flaky(step, abstract_state, *manager):
    calls.append(step)
    if len(calls) == 1:
      raise OSError("transient")
    return real(step, abstract_state, *manager)

  monkeypatch.setattr(ckpt, "_restore", flaky)
  step, state, data = ckpt.restore_latest(_abstract())
  ckpt.close()
  assert (step, data, calls) == (2, {"position": 2}, [2, 2])
  assert not ckpt.unreadable()


def test_all_unreadable_is_an_error_unless_restart_is_asked_for(tmp_path, monkeypatch, capsys):
  """Catches: a run whose checkpoints are all unreadable silently training from step 0 (and
  overwriting its metrics), now or on the next attempt, once they have been moved aside."""
  monkeypatch.setattr(ckpt_lib, "RETRY_AFTER_S", 0.0)
  directory = tmp_path / "checkpoints"
  _saved(directory, [1, 2]).close()
  for step in (1, 2):
    _corrupt(directory / str(step))
  for attempt in range(2):  # the second finds only the checkpoints the first moved aside
    ckpt = ckpt_lib.Checkpointer(str(directory), keep=10, every_steps=1)
    with pytest.raises(ckpt_lib.UnreadableCheckpoints,
                       match=r"no readable checkpoint, only unreadable-1-\d+, unreadable-2-\d+ .*"
                             r"set --config.checkpoint.restart_if_unreadable=True"):
      ckpt.restore_latest(_abstract())
    ckpt.close()
  assert len(capsys.readouterr().out.splitlines()) == 2  # one warning per checkpoint, once
  ckpt = ckpt_lib.Checkpointer(str(directory), keep=10, every_steps=1, restart_if_unreadable=True)
  assert ckpt.restore_latest(_abstract()) is None
  ckpt.close()


def test_keep_steps_survive_the_rotation(tmp_path):
  """Catches: checkpoint.keep_steps saved but rotated out by keep (a WSD stable run would lose
  the checkpoints its cooldowns branch from), or keep ignored for the other steps."""
  from train import config as config_lib

  settings = config_lib.CheckpointSettings(every_steps=3, keep=1, keep_steps=(5, 2))
  assert settings.keep_steps == (2, 5)
  assert [s for s in range(1, 8) if settings.must_save(s)] == [2, 3, 5, 6]
  ckpt = ckpt_lib.Checkpointer.of(str(tmp_path), settings)
  for step in [2, 3, 5, 6]:
    ckpt.save(step, STATE, {"position": step})
  assert ckpt.steps() == [2, 5, 6]
  ckpt.close()
  with pytest.raises(config_lib.ConfigError, match="checkpoint.keep_steps"):
    config_lib.CheckpointSettings(keep_steps=(0,))


def test_orbax_noise_after_a_failed_read_or_write_goes_to_the_log_not_the_terminal(tmp_path):
  # Catches the two late reports the fault suite found on the terminal: a damaged checkpoint's
  # unawaited orbax reads ("Exception ignored in: <coroutine ...>") and asyncio's "Task exception
  # was never retrieved" for a failed save's other fragments. Anything else still reaches the
  # previous hook / the terminal.
  import logging
  import types

  from train import checkpoint_errors as errors

  log = str(tmp_path / "restore.log")
  seen = []
  hooks = errors.LateNoiseToLog(log)
  hooks.previous_unraisable = seen.append
  ns = {}
  exec(compile("async def read():\n  pass\n", "/site-packages/orbax/checkpoint/x.py", "exec"), ns)
  coro = ns["read"]()
  hooks(types.SimpleNamespace(object=coro, exc_value=Exception("read failed"), exc_traceback=None))
  coro.close()
  other = types.SimpleNamespace(object=None, exc_value=Exception("mine"), exc_traceback=None)
  hooks(other)
  assert seen == [other] and "read failed" in open(log).read()

  f = errors.OrbaxLogToFile(log)
  record = lambda name, msg: logging.LogRecord(name, logging.ERROR, "/usr/lib/base_events.py", 1,
                                               msg, None, None)
  assert not f.filter(record("asyncio", "Task exception was never retrieved ... orbax/x.py"))
  assert f.filter(record("asyncio", "Task exception was never retrieved ... myproject"))
  assert f.filter(record("train", "orbax"))  # only asyncio's and orbax's own records are taken
