"""train/metrics.py's loggers (train.loggers): the chosen sinks get every record, wandb is named
after the workdir, records the config and runs offline without an API key; a bad name is one line."""

import json
import os
import sys
import types

import pytest

from train import config as config_lib
from train import metrics as metrics_lib


def _no_wandb_credentials(monkeypatch, home):
  for name in ("WANDB_MODE", "WANDB_API_KEY"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("HOME", str(home))  # no ~/.netrc


def test_a_bad_logger_name_is_a_one_line_config_error():
  with pytest.raises(config_lib.ConfigError, match="train.loggers has unknown 'tensorbord'"):
    config_lib.TrainSettings(loggers=("jsonl", "tensorbord"))
  assert config_lib.TrainSettings(loggers="jsonl, wandb").loggers == ("jsonl", "wandb")
  assert config_lib.TrainSettings().loggers == metrics_lib.DEFAULT_LOGGERS


def test_only_the_chosen_loggers_write(tmp_path):
  """Catches a sink that ignores train.loggers (TensorBoard written when not asked for)."""
  w = metrics_lib.MetricsWriter(str(tmp_path), ("jsonl",))
  w.write(1, {"loss": 2.5})
  w.close()
  assert metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl")) == [{"step": 1, "loss": 2.5}]
  assert not (tmp_path / "tensorboard").exists()


def test_wandb_logger_with_a_stand_in_module(tmp_path, monkeypatch):
  """A fake `wandb` in sys.modules records the calls (runs without the extra installed). Catches
  a run not named after the workdir, the config left out, a metric logged at the wrong step or
  with the step inside it, online mode without credentials, WANDB_MODE overridden, and a resumed
  workdir starting a second W&B run."""
  calls = []

  class Run:
    def log(self, metrics, step):
      calls.append(("log", step, dict(metrics)))

    def finish(self):
      calls.append(("finish",))

  fake = types.ModuleType("wandb")
  fake.init = lambda **kw: calls.append(("init", kw)) or Run()
  monkeypatch.setitem(sys.modules, "wandb", fake)
  _no_wandb_credentials(monkeypatch, tmp_path)
  workdir = tmp_path / "my_run"
  for _ in range(2):  # a run, then its resumption
    w = metrics_lib.MetricsWriter(str(workdir), ("wandb",), config={"train": {"lr": 0.01}})
    w.write(3, {"loss": 1.5, "eval_loss": float("nan"), "note": "x"})
    w.close()
  (_, first), (_, second) = [c for c in calls if c[0] == "init"]
  assert first["name"] == "my_run" and first["config"] == {"train": {"lr": 0.01}}
  assert first["mode"] == "offline" and first["dir"] == str(workdir)
  assert second["id"] == first["id"] and second["resume"] == "allow"
  assert ("log", 3, {"loss": 1.5}) in calls and calls[-1] == ("finish",)
  monkeypatch.setenv("WANDB_MODE", "online")
  assert metrics_lib.wandb_mode() is None


def test_wandb_offline_run_writes_a_run_directory(tmp_path, monkeypatch):
  """The real wandb (the `test` extra installs it; skipped only where it is not installed):
  an offline run leaves workdir/wandb/offline-run-*, its history holding the logged metrics."""
  pytest.importorskip("wandb")
  _no_wandb_credentials(monkeypatch, tmp_path)
  monkeypatch.setenv("WANDB_SILENT", "true")
  w = metrics_lib.MetricsWriter(str(tmp_path / "run"), ("wandb", "jsonl"), config={"seed": 0})
  w.write(1, {"loss": 3.0})
  w.write(2, {"loss": 2.0})
  w.close()
  runs = [d for d in os.listdir(tmp_path / "run" / "wandb") if d.startswith("offline-run-")]
  assert len(runs) == 1
  assert any(f.endswith(".wandb") for f in os.listdir(tmp_path / "run" / "wandb" / runs[0]))
  assert [json.loads(x)["loss"] for x in open(tmp_path / "run" / "metrics.jsonl")] == [3.0, 2.0]
