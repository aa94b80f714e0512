"""train/checkpoint.py's asynchronous saves, time-based temporary checkpoints and write failures:
a kill -9 during a save in flight resumes exactly, temporaries rotate, a full disk is one line."""

import glob
import os
import shlex
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import ROOT, script_env, tiny_config, train_args
from train import checkpoint as ckpt_lib
from train import config as config_lib
from train import loop
from train import metrics as metrics_lib
from train import pretrain


def _losses(workdir) -> dict[int, float]:
  return {r["step"]: r["loss"]
          for r in metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))}


def _entries(directory) -> list[str]:
  return sorted(os.listdir(directory))


# experiments.train, with the background commit of checkpoint 8 held back for an hour: the run
# goes on training past it, then waits for it in the final save, and is killed there.
_HOLD_STEP_8 = """
import runpy, sys, time
from orbax.checkpoint._src.checkpointers import async_checkpointer as ac
real = ac._background_wait_for_commit_futures
def held(directory, *args, **kwargs):
  if str(directory).endswith("/8"):
    time.sleep(3600)
  return real(directory, *args, **kwargs)
ac._background_wait_for_commit_futures = held
sys.argv = ["experiments/train.py", *sys.argv[1:]]
runpy.run_module("experiments.train", run_name="__main__")
"""


def test_kill_9_during_an_async_save_resumes_from_the_previous_checkpoint_exactly(
    tmp_path, tiny_corpus):
  """Catches: a save in flight (its files written, not yet committed) taken for the newest
  checkpoint on resume; the async save reading the state after later steps changed it (the
  resumed losses would differ); a save that blocks training until written (step 12 would not be
  reached while 8 is in flight); orbax's temporary directory left behind by the resume."""
  run = tmp_path / "run"
  args = train_args(run, tiny_corpus, "--config.train.steps=12", "--config.checkpoint.every_steps=4",
                    "--config.train.eval_every=1000")
  proc = subprocess.Popen([sys.executable, "-c", _HOLD_STEP_8, *args], cwd=ROOT, env=script_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while 12 not in (_losses(run) if (run / "metrics.jsonl").exists() else {}):
    assert proc.poll() is None and time.time() < deadline, "the held run ended or hung early"
    time.sleep(0.1)
  time.sleep(0.5)  # into the final save, which waits for step 8's
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL
  uninterrupted = _losses(run)
  assert sorted(uninterrupted) == list(range(1, 13))
  ckpts = run / "checkpoints"
  assert "4" in _entries(ckpts) and "8" not in _entries(ckpts)
  assert any(n.startswith("8.orbax-checkpoint-tmp") for n in _entries(ckpts)), _entries(ckpts)

  again = subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=ROOT,
                         env=script_env(), capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-2000:]
  assert "resuming from step 4" in again.stdout
  assert _losses(run) == uninterrupted  # steps 5..12 retrained bit-identically
  assert _entries(ckpts) == ["12", "4", "8"]  # nothing half-written left


def _state(x) -> dict:
  return {"params": {"w": x}, "opt_state": {"m": 2 * x}}


def _abstract(state):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)


def test_every_minutes_keeps_only_the_newest_temporary_and_restore_takes_the_newest(
    tmp_path, monkeypatch):
  """Steps of 25 clock seconds, every_minutes=1, permanent every 5 steps: temporaries at 3 and 8
  (a permanent save restarts the clock), the run dies at step 10 before saving it. Catches: the
  clock ignored or not restarted by a permanent save, an older temporary left behind (or kept
  in place of the newer), temporaries rotating permanent ones out, a resume that ignores the
  newer temporary checkpoint."""
  now = [0.0]
  monkeypatch.setattr(ckpt_lib, "_clock", lambda: now[0])
  settings = config_lib.CheckpointSettings(every_steps=5, keep=1, every_minutes=1)
  directory = str(tmp_path / "checkpoints")
  ckpt = ckpt_lib.Checkpointer.of(directory, settings)
  saves, temp_seen = [], []

  def train_step(step, state):
    if step == 9:
      raise RuntimeError("node lost")  # before step 10 is saved
    now[0] += 25.0
    return jax.tree.map(lambda a: a + 1, state), {}

  def save(step, state, early, temporary=False):
    saves.append((step, "temp" if temporary else "perm"))
    ckpt.save(step, state, {"step": step}, temporary=temporary)
    temp_seen.append(ckpt.temporary_steps())

  hooks = loop.Hooks(
      report=lambda step, metrics, state: {}, save=save, must_save=settings.must_save,
      temporary_due=ckpt.temporary_due,
      save_temporary=lambda step, state: save(step, state, False, temporary=True),
      wait_saved=ckpt.wait)
  with pytest.raises(RuntimeError, match="node lost"):
    try:
      loop.run_steps(_state(jnp.zeros(3)), 0, 12, train_step, hooks)
    finally:
      ckpt.close()
  assert saves == [(3, "temp"), (5, "perm"), (8, "temp")]
  assert temp_seen[-1] in ([3], [8])  # step 8's may still be in flight when save returns
  assert _entries(directory) == ["5", "temp"]
  assert _entries(os.path.join(directory, "temp")) == ["8"]

  again = ckpt_lib.Checkpointer.of(directory, config_lib.CheckpointSettings(every_steps=5))
  step, state, data = again.restore_latest(_abstract(_state(jnp.zeros(3))))
  again.close()
  assert (step, data) == (8, {"step": 8})
  np.testing.assert_array_equal(state["params"]["w"], np.full(3, 8.0))
  with pytest.raises(config_lib.ConfigError, match=r"^checkpoint\.every_minutes=-1 "):
    config_lib.CheckpointSettings(every_minutes=-1)


def test_async_and_sync_saves_restore_the_same_state(tmp_path):
  """The state saved, then changed at once by a step that donates its buffers (as the train
  step does) while the asynchronous write is still going: both modes must restore what was
  saved, bit for bit. Catches: an async save that reads the arrays after save() returned."""
  update = jax.jit(lambda s: jax.tree.map(lambda a: a * 1.5 + 1.0, s), donate_argnums=0)
  restored = {}
  for mode in (True, False):
    state = _state(jnp.linspace(-1.0, 1.0, 1 << 21, dtype=jnp.float32))
    expected = jax.tree.map(np.array, state)
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / str(mode)), keep=2, every_steps=1,
                                 async_save=mode)
    ckpt.save(1, state, {"rows": [1, 2]})
    for _ in range(3):
      state = update(state)
    ckpt.close()
    reader = ckpt_lib.Checkpointer(str(tmp_path / str(mode)), keep=2, every_steps=1)
    step, got, data = reader.restore_latest(_abstract(state))
    reader.close()
    assert (step, data) == (1, {"rows": [1, 2]})
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, got), expected)
    restored[mode] = got
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               restored[True], restored[False])


def test_a_save_the_file_size_limit_cuts_short_is_one_line_and_keeps_the_previous(
    tmp_path, tiny_corpus):
  """`ulimit -f` below a checkpoint's size: the save at step 6 fails in the background. Catches:
  a traceback (orbax's threads, 'Event loop is closed') on the terminal instead of one line
  naming the file and the errno; the half-written step 6 left behind or taken for the newest."""
  run = tmp_path / "run"
  pretrain.train(tiny_config(tiny_corpus, **{"train.steps": 3}), str(run))  # checkpoint 3
  env = script_env()
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # its entries would meet the limit too
  # ulimit -f in 1024-byte blocks: 100 KB, the tiny model's checkpoint is ~4x that, metrics.jsonl
  # far less. (bash sets it: a preexec_fn would fork this multithreaded process.)
  command = shlex.join([sys.executable, "-m", "experiments.train",
                      *train_args(run, tiny_corpus, "--config.train.steps=6")])
  done = subprocess.run(["bash", "-c", f"ulimit -f 100 && exec {command}"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 2, done.stderr[-3000:]
  [line] = [l for l in done.stderr.splitlines() if l.startswith("error:")]
  ckpts = str(run / "checkpoints")
  assert line.startswith(f"error: could not write checkpoint {ckpts}/6: errno 27 EFBIG (File too "
                         f"large) writing {ckpts}/6.orbax-checkpoint-tmp/"), line
  assert "the newest checkpoint is still step 3" in line
  for noise in ("Traceback", "Event loop", "orbax", "ERROR:absl"):
    assert noise not in done.stderr.replace(line, ""), done.stderr[-3000:]
  with open(run / "restore.log", encoding="utf-8") as f:
    assert "File too large" in f.read()
  assert _entries(ckpts) == ["3"]
  reader = ckpt_lib.Checkpointer(ckpts, keep=3, every_steps=3, owner=False)
  assert reader.steps() == [3]
  reader.close()
  assert not glob.glob(os.path.join(ckpts, "*tmp*"))
