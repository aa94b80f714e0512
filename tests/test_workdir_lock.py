"""The workdir lock (train/workdir_lock.py): one live run per workdir, stale locks taken over."""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys

import pytest

from tests import helpers
from train import workdir_lock

# Takes the lock of argv[1], says so, and sleeps until killed.
_HOLDER = ("import sys, time\n"
           "from train import workdir_lock\n"
           "workdir_lock.hold(sys.argv[1])\n"
           "print('held', flush=True)\n"
           "time.sleep(120)\n")


@pytest.fixture
def holder(tmp_path):
  """(workdir, process) of another live process holding the workdir's lock."""
  workdir = str(tmp_path / "run")
  proc = subprocess.Popen([sys.executable, "-c", _HOLDER, workdir], cwd=helpers.ROOT,
                          env=helpers.script_env(), stdout=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline().strip() == "held"
    yield workdir, proc
  finally:
    proc.kill()
    proc.wait()


def test_a_live_holder_refuses_a_second_run_naming_it_and_its_death_frees_the_workdir(
    holder, capsys):
  """Catches: no lock, a lock that is not exclusive across processes, a refusal that does not
  name the holder (pid and host) or is not a one-line ValueError, and a lock left by kill -9
  that blocks the workdir for good."""
  workdir, proc = holder
  with pytest.raises(ValueError) as e:
    workdir_lock.hold(workdir)
  message = str(e.value)
  assert isinstance(e.value, workdir_lock.WorkdirBusy) and "\n" not in message
  assert f"workdir {workdir} is in use by pid {proc.pid} on host {socket.gethostname()}" in message
  assert message.endswith("wait for it or use another --workdir")
  proc.kill()  # kill -9: its lock file stays behind, naming it
  proc.wait()
  assert json.loads(open(os.path.join(workdir, ".lock")).read())["pid"] == proc.pid
  with workdir_lock.hold(workdir):
    assert json.loads(open(os.path.join(workdir, ".lock")).read())["pid"] == os.getpid()
  err = capsys.readouterr().err
  assert f"taking over the lock of {workdir} left by pid {proc.pid}" in err
  assert not os.path.exists(os.path.join(workdir, ".lock"))  # released at the end


def test_a_lock_file_naming_a_dead_pid_is_taken_over_and_released_on_an_exception(
    tmp_path, capsys):
  """Catches: a stale lock (its process gone) refused as if live, a takeover without its note,
  and a lock kept after the run raised."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  (workdir / ".lock").write_text(json.dumps(
      {"host": socket.gethostname(), "pid": dead.pid, "since": "2026-01-01 00:00:00"}))
  with pytest.raises(RuntimeError):
    with workdir_lock.hold(str(workdir)):
      raise RuntimeError("the run failed")
  assert f"left by pid {dead.pid}" in capsys.readouterr().err
  assert not (workdir / ".lock").exists()
  r = subprocess.run([sys.executable, "-c", _HOLDER.replace("time.sleep(120)", ""), str(workdir)],
                     cwd=helpers.ROOT, env=helpers.script_env(), capture_output=True, text=True)
  assert r.returncode == 0 and r.stdout.strip() == "held", r.stderr[-2000:]


def test_pretraining_and_a_stage_stop_at_once_on_a_held_workdir(holder, tiny_corpus):
  """Catches: train() or an alignment stage's Run not taking the lock, or taking it after
  writing into the workdir (config.json, the tokenizer, shards)."""
  from train import config as config_lib
  from train import pretrain
  from train.align import stage as stage_lib

  workdir, proc = holder
  with pytest.raises(workdir_lock.WorkdirBusy, match=f"pid {proc.pid}"):
    pretrain.train(helpers.tiny_config(tiny_corpus, **{"train.steps": 1}), workdir)
  c = importlib.import_module("experiments.configs.sft").get_config()
  with pytest.raises(workdir_lock.WorkdirBusy, match=f"pid {proc.pid}"):
    stage_lib.Run(c, workdir, "", stage="sft", stage_settings=config_lib.resolve_stage(c, "sft"),
                  total_updates=1)
  assert sorted(os.listdir(workdir)) == [".lock"]
