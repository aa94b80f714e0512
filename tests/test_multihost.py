"""Multi-host training on JAX's distributed runtime: two processes on localhost, 4 CPU devices each,
gloo collectives between them, against one process with 8 devices.

The two processes run once (module fixture) while the one-process run trains in the test process;
every claim below reads their outputs.
"""

import glob
import json
import os
import random
import re
import shutil
import socket
import subprocess
import time
import types

import pytest

from sharding import distributed
from tests.helpers import ROOT, script_cmd, script_env, tiny_config, train_args
from train import pretrain
from train import metrics as metrics_lib

STEPS = 6  # tiny.py checkpoints every 3 steps
OVERRIDES = {"train.steps": STEPS, "train.eval_every": 1000, "sharding.zero_stage": 3}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _corpus(root) -> str:
  rng = random.Random(0)
  words = ["alpha", "beta", "gamma", "delta", "def", "return", "class", "import", "self", "x"]
  d = root / "corpus"
  d.mkdir()
  for i in range(6):
    (d / f"doc{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(400)), encoding="utf-8")
  return str(d / "*.txt")


def _losses(workdir) -> dict[int, float]:
  return {r["step"]: r["loss"] for r in metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))}


# The coordinator binds the port some time after _free_port released it; another program can take
# it in between. Then process 0 fails to bind, and the launch is retried on a fresh port.
_PORT_TAKEN = re.compile(
    r"address already in use|failed to bind|failed to add port|failed to start rpc server", re.IGNORECASE)
LAUNCH_ATTEMPTS = 3


def _run_two_processes(root, two, corpus, flags, meanwhile=None, timeout=600):
  """Starts the two processes on a fresh port, runs meanwhile() while they train, returns their
  exit codes. When one fails, the other is killed (it would wait for its peer until timeout)."""
  port = _free_port()
  procs, logs = [], []
  for i in range(2):
    out, err = open(root / f"out{i}.txt", "w"), open(root / f"err{i}.txt", "w")
    logs.append((out, err))
    procs.append(subprocess.Popen(
        script_cmd("experiments.train", *train_args(two, corpus, *flags),
                   f"--coordinator_address=localhost:{port}", "--num_processes=2",
                   f"--process_id={i}"),
        cwd=ROOT, env=script_env(n_devices=4), stdout=out, stderr=err, text=True))
  try:
    if meanwhile is not None:
      meanwhile()
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
      if any(p.poll() not in (None, 0) for p in procs):
        break
      time.sleep(0.5)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
    for out, err in logs:
      out.close()
      err.close()
  return [p.returncode for p in procs]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("multihost")
  corpus = _corpus(root)
  two, one = root / "two", root / "one"
  flags = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
  read = lambda name: (root / name).read_text()  # noqa: E731
  for attempt in range(LAUNCH_ATTEMPTS):
    shutil.rmtree(two, ignore_errors=True)
    meanwhile = (lambda: pretrain.train(tiny_config(corpus, **OVERRIDES), str(one))) if attempt == 0 else None
    codes = _run_two_processes(root, two, corpus, flags, meanwhile)  # meanwhile: 1 process, 8 devices
    err = [read(f"err{i}.txt") for i in range(2)]
    if codes == [0, 0] or not any(_PORT_TAKEN.search(e) for e in err):
      break
  return types.SimpleNamespace(
      root=root, corpus=corpus, two=two, one=one, codes=codes,
      out=[read(f"out{i}.txt") for i in range(2)], err=err)


def test_two_processes_give_the_losses_of_one_process_with_8_devices(runs):
  assert runs.codes == [0, 0], runs.err[0][-2000:] + runs.err[1][-2000:]
  two, one = _losses(runs.two), _losses(runs.one)
  assert sorted(two) == list(range(1, STEPS + 1))
  for step in one:
    assert two[step] == pytest.approx(one[step], abs=1e-5)


def test_only_process_0_writes_logs_and_the_progress_bar(runs):
  summary = json.loads(runs.out[0].strip().splitlines()[-1])
  assert summary["final_step"] == STEPS
  # Each process read only its half of every batch from the shards (train/loop.py's rows_batch), and
  # the losses above still equal one process's: the halves make up the global batch.
  assert summary["rows_read_per_step"] == tiny_config("").train.batch_size // 2
  # gloo's C++ library announces its connections on stdout ("[Gloo] Rank 7 is connected to 7 peer
  # ranks. ..."), from several threads, so one announcement can be split across lines; nothing
  # else may come from process 1.
  gloo = re.compile(r"^\[Gloo\]|is connected to \d+ peer ranks|^\s*$")
  assert [line for line in runs.out[1].splitlines() if not gloo.search(line)] == []
  assert "train: 100%" in runs.err[0] and "train:" not in runs.err[1]
  assert len(metrics_lib.read_jsonl(os.path.join(runs.two, "metrics.jsonl"))) == STEPS  # once


def test_both_processes_write_one_checkpoint(runs):
  assert sorted(os.listdir(runs.two / "checkpoints")) == ["3", "6"]
  # Orbax's OCDBT format: one data file per process inside the one checkpoint.
  assert len(glob.glob(str(runs.two / "checkpoints" / "6" / "state" / "ocdbt.process_*"))) == 2


def test_checkpoint_of_two_processes_resumes_in_one_under_another_stage_and_mesh(runs, tmp_path):
  wd = tmp_path / "resumed"
  shutil.copytree(runs.two, wd)
  shutil.rmtree(wd / "checkpoints" / "6")
  summary = pretrain.train(tiny_config(runs.corpus, **{
      **OVERRIDES, "sharding.zero_stage": 1, "sharding.mesh": {"data": 4, "tensor": 2}}), str(wd))
  assert summary["start_step"] == 3
  before, after = _losses(runs.two), _losses(wd)  # steps 4..6 logged again, the last value kept
  for step in (4, 5, 6):
    assert after[step] == pytest.approx(before[step], abs=1e-5)


# --- Start-up: flags, environment, or neither ----------------------------------------------------

def test_no_flags_and_no_cluster_is_one_process():
  assert distributed.detected_cluster({}) is None
  assert distributed.initialize(environ={}) is False
  assert distributed.initialize(num_processes=1, environ={}) is False


@pytest.mark.parametrize("environ, cluster", [
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}, "slurm"),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, None),  # a one-task job: nothing to connect
    ({"OMPI_COMM_WORLD_SIZE": "4"}, "openmpi"),
    ({"TPU_WORKER_HOSTNAMES": "t1,t2,t3,t4"}, "tpu"),
])
def test_cluster_launchers_are_detected(environ, cluster):
  assert distributed.detected_cluster(environ) == cluster


def test_incomplete_flags_are_a_one_line_error():
  with pytest.raises(distributed.DistributedError) as e:
    distributed.initialize(num_processes=2, environ={})
  assert "--coordinator_address, --process_id missing" in str(e.value)
  with pytest.raises(distributed.DistributedError, match=r"--process_id=2 must be in \[0, "):
    distributed.initialize("localhost:1234", 2, 2, environ={})
