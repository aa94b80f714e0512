"""Training end to end: exact resumption, preemption, unreadable checkpoints, NaN stop, CLI errors."""

import glob
import json
import os
import re
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from tests.helpers import ROOT, run_script, script_cmd, script_env, tiny_config, train_args
from train import config as config_lib, loop, pretrain, state as state_lib
from train import metrics as metrics_lib


def _losses(workdir) -> dict[int, float]:
  """Per-step losses; a step logged twice (before and after a restart) keeps its last value."""
  out = {}
  for r in metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl")):
    out[r["step"]] = r["loss"]
  return out


def _steps(workdir) -> list[int]:
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def test_resume_after_kill_9_gives_bit_identical_losses(tmp_path, tiny_corpus):
  """A mixture of two sources read from prepared shards: catches a mixture position or a shard
  read that the checkpoint does not restore exactly."""
  txt, jsonl = tiny_corpus.split(",")
  mixture = f'({{"paths": "{txt}", "weight": 0.7}}, {{"paths": "{jsonl}", "weight": 0.3}})'
  overrides = ("--config.train.steps=40", "--config.checkpoint.every_steps=4",
               "--config.train.eval_every=1000", f"--config.data.sources={mixture}")
  ref = tmp_path / "ref"
  done = run_script("experiments.train", *train_args(ref, tiny_corpus, *overrides))
  assert done.returncode == 0, done.stderr[-2000:]

  run = tmp_path / "run"
  proc = subprocess.Popen(script_cmd("experiments.train", *train_args(run, tiny_corpus, *overrides)),
                          cwd=ROOT, env=script_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while not os.path.isdir(run / "checkpoints" / "8") and time.time() < deadline:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL
  killed_at = max(_losses(run))
  assert killed_at < 40, "the run finished before it was killed; nothing was tested"

  again = run_script("experiments.train", *train_args(run, tiny_corpus, *overrides))
  assert again.returncode == 0, again.stderr[-2000:]
  assert _losses(run) == _losses(ref)  # bit-identical floats, every step 1..40
  assert len(_losses(ref)) == 40
  assert len(os.listdir(run / "data")) == 3  # the tokenizer and one shard folder per source


def test_sigterm_finishes_the_step_saves_and_exits_0(tmp_path, tiny_corpus):
  run = tmp_path / "run"
  proc = subprocess.Popen(
      script_cmd("experiments.train", *train_args(
          run, tiny_corpus, "--config.train.steps=100000", "--config.checkpoint.every_steps=50000")),
      cwd=ROOT, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 240
  metrics = run / "metrics.jsonl"
  while (not metrics.exists() or len(metrics.read_text().splitlines()) < 3) and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-2000:]
  assert "received SIGTERM" in out
  saved = _steps(run)
  assert len(saved) == 1 and 3 <= saved[0] < 50000
  assert max(_losses(run)) == saved[0]


def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, tiny_corpus, capfd,
                                                                     monkeypatch):
  """Catches: a truncated newest checkpoint failing the resume; on the terminal more than one
  warning line (orbax's log lines, 'Event loop is closed' tracebacks from its threads, a cut-off
  pybind11 message) or a line that names no file; the detail missing from restore.log; and,
  once every checkpoint is unreadable, a silent restart from step 0."""
  from train import checkpoint as ckpt_lib

  monkeypatch.setattr(ckpt_lib, "RETRY_AFTER_S", 0.0)
  wd = str(tmp_path / "run")
  config = tiny_config(tiny_corpus, **{"train.steps": 9})
  pretrain.train(config, wd)  # checkpoints at 3, 6 and 9
  before = _losses(wd)
  assert _steps(wd) == [3, 6, 9]

  def truncate(step):  # the array data and metadata of a checkpoint, cut to a third
    for f in glob.glob(os.path.join(wd, "checkpoints", str(step), "state", "**"), recursive=True):
      if os.path.isfile(f) and os.path.getsize(f) > 1000:
        with open(f, "r+b") as fh:
          fh.truncate(os.path.getsize(f) // 3)

  truncate(9)
  capfd.readouterr()
  summary = pretrain.train(config, wd)
  out, err = capfd.readouterr()
  log_path = os.path.join(wd, "restore.log")
  [line] = [l for l in out.splitlines() if l.startswith("WARNING")]  # the banner aside
  assert line.startswith(f"WARNING: checkpoint {wd}/checkpoints/9 is unreadable (file state/")
  assert line.endswith(f"details in {log_path}")
  assert "Traceback" not in err and "Event loop" not in err and "orbax" not in err
  with open(log_path, encoding="utf-8") as f:
    assert "Traceback" in f.read()
  assert summary["start_step"] == 6
  assert os.path.isdir(os.path.join(wd, "checkpoints", "6"))  # the readable one is kept
  assert glob.glob(os.path.join(wd, "checkpoints", "unreadable-9-*"))  # moved aside, not deleted
  assert _steps(wd) == [3, 6, 9]
  assert _losses(wd) == before  # steps 7..9 retrained bit-identically

  for step in (3, 6, 9):
    truncate(step)
  with pytest.raises(ckpt_lib.UnreadableCheckpoints,
                     match=r"only unreadable-3-\d+, unreadable-6-\d+, unreadable-9-\d+, "
                           r"unreadable-9-\d+ .*restart_if_unreadable=True"):
    pretrain.train(config, wd)
  assert _losses(wd) == before  # nothing was retrained over the run's metrics


def test_leftover_temporary_save_is_ignored(tmp_path, tiny_corpus):
  wd = str(tmp_path / "run")
  pretrain.train(tiny_config(tiny_corpus, **{"train.steps": 3}), wd)
  junk = os.path.join(wd, "checkpoints", "6.orbax-checkpoint-tmp-1234567")
  os.makedirs(os.path.join(junk, "state"))
  with open(os.path.join(junk, "state", "half"), "wb") as f:
    f.write(b"\0" * 100)
  summary = pretrain.train(tiny_config(tiny_corpus, **{"train.steps": 6}), wd)
  assert summary["start_step"] == 3 and summary["final_step"] == 6


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_corpus):
  """Catches: a NaN loss saved as the newest checkpoint, and (second run) a state the update made
  Inf saved at a checkpoint step although that step's loss, computed before the update, was
  finite."""
  wd = str(tmp_path / "run")
  pretrain.train(tiny_config(tiny_corpus, **{"train.steps": 3}), wd)
  # An infinite lr: step 4's loss (before its update) is finite, the state after it is not.
  # Both runs compile the same step; only where they save differs.
  blow_up = {"train.steps": 30, "train.lr": float("inf")}
  with pytest.raises(loop.NonFiniteLoss, match=r"NaN or Inf after step 4; stopped without saving"):
    pretrain.train(tiny_config(tiny_corpus, **blow_up, **{"checkpoint.every_steps": 4}), wd)
  assert _steps(wd) == [3]
  with pytest.raises(loop.NonFiniteLoss, match=r"loss is (nan|inf) at step \d+.*checkpoint \(3\) is untouched"):
    pretrain.train(tiny_config(tiny_corpus, **blow_up), wd)
  assert _steps(wd) == [3]
  summary = pretrain.train(tiny_config(tiny_corpus, **{"train.steps": 4}), wd)
  assert summary["start_step"] == 3


def test_finished_run_extends_when_steps_grow_and_traces_the_profiled_steps(tmp_path, tiny_corpus):
  """Also catches: --profile_steps not reaching the loop, or a range that starts before the
  resumed run's first step never starting the trace (no trace file)."""
  wd = str(tmp_path / "run")
  pretrain.train(tiny_config(tiny_corpus), wd)
  assert not os.path.exists(os.path.join(wd, "profile"))
  summary = pretrain.train(tiny_config(tiny_corpus, **{"train.steps": 9}), wd, profile_steps=(2, 7))
  assert summary["start_step"] == 6 and summary["final_step"] == 9
  assert glob.glob(os.path.join(wd, "profile", "plugins", "profile", "*", "*.xplane.pb"))
  assert set(metrics_lib.read_jsonl(os.path.join(wd, "metrics.jsonl"))[-1]) >= {
      "step", "loss", "lr", "grad_norm", "tokens_seen", "eval_loss"}
  # train/run_report.py (experiments.train --results_dir, make train's results/default_run):
  # catches a results file that mixes up the invocation's first step, the final losses or the
  # baseline, or has no sample.
  from train import run_report
  run_report.write_results(wd, str(tmp_path / "results"), summary, wall_s=1.5)
  written = json.load(open(tmp_path / "results" / "results.json"))
  assert (written["start_step"], written["final_step"], written["invocation_wall_time_s"]) == (6, 9, 1.5)
  assert written["final_eval_loss"] == summary["eval_loss"] == written["eval"][-1]["eval_loss"]
  assert [e["step"] for e in written["eval"]] == [3, 6, 9]
  assert written["unigram_entropy"] == summary["unigram_entropy"] > 0
  assert written["sample"]["text"].startswith("def ") and len(written["sample"]["text"]) > 4


@pytest.mark.parametrize("flag, needle", [
    ("--config.data.paths=/no/such/*.txt", "error: data.paths: '/no/such/*.txt' matches no file"),
    ("--config.train.batch_size=12", "must be divisible by the data-parallel size"),
])
def test_cli_bad_input_is_one_line_error(tmp_path, tiny_corpus, flag, needle):
  args = train_args(tmp_path / "run", tiny_corpus, flag)
  env_devices = 8 if "batch_size" in flag else 1
  done = run_script("experiments.train", *args, n_devices=env_devices)
  assert done.returncode == 2
  assert needle in done.stderr
  assert "Traceback" not in done.stderr
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_cli_rejects_unknown_and_mistyped_settings(tmp_path, tiny_corpus):
  """Catches: absl / ml_collections printing a traceback (and exit 1) for a typo in a setting or
  a value of the wrong type, instead of one line naming it and exit 2; in-process cases of every
  message are in tests/test_config.py."""
  for flag, line in (
      ("--config.train.stepz=3",
       "error: unknown setting config.train.stepz (did you mean config.train.steps?)"),
      ("--config.train.steps=many", "error: config.train.steps=many: expected an int")):
    done = run_script("experiments.train", *train_args(tmp_path / "run", tiny_corpus, flag))
    assert done.returncode == 2
    assert done.stderr.strip() == line
    assert not os.path.exists(tmp_path / "run")


def test_memory_preflight_refuses_stage_2_names_stage_3_and_stage_3_trains(tmp_path, tiny_corpus):
  """sharding.device_memory_gb just above what the compiled step needs at stage 3: stage 2 is
  refused with one line naming its need, the budget and zero_stage=3 (the lowest
  that fits), before anything is written; stage 3 then trains. Catches: a check on the state's
  bytes instead of the compiled step, a suggestion of a stage that does not fit, or a check
  that runs after the workdir is written. (Starting at stage 2 rather than 0 compiles two steps
  fewer; sharding/memory.preflight's search from any stage is tested on its own.)"""
  import jax
  import numpy as np

  from sharding import memory as memory_lib
  from sharding import mesh as mesh_lib

  overrides = {"model.d_model": 128, "model.n_layers": 4, "model.d_ff": 512, "train.steps": 2,
               "checkpoint.every_steps": 2, "train.eval_every": 2, "data.seq_len": 16,
               "sharding.mesh": {"data": 8}, "sharding.zero_stage": 2}
  config = tiny_config(tiny_corpus, **overrides)
  run_settings = config_lib.resolve(config)
  mesh = mesh_lib.make_mesh(run_settings.sharding.mesh)

  def need(stage):
    # As the pre-flight builds it (the same program, so the compilation cache serves both).
    training = state_lib.make_sharded_training(
        run_settings.model, run_settings.train, mesh, stage, pad_id=-1, documents=(-1, False))
    struct = jax.ShapeDtypeStruct((8, 17), np.int32, sharding=training.batch_sharding)
    return memory_lib.step_bytes(
        training.train_step.lower(training.abstract_state, struct).compile())

  need_3 = need(3)
  config.sharding.device_memory_gb = 1.02 * need_3 / memory_lib.GB
  workdir = tmp_path / "run"
  with pytest.raises(mesh_lib.MeshError) as e:
    pretrain.train(config, str(workdir))
  assert "per device at sharding.zero_stage=2, over sharding.device_memory_gb=" in str(e.value)
  assert str(e.value).endswith(f"zero_stage=3 needs {need_3 / memory_lib.GB:.3g} GB")
  assert not workdir.exists()
  config.sharding.zero_stage = 3
  assert pretrain.train(config, str(workdir))["final_step"] == 2


def _records(workdir) -> dict[int, dict]:
  return {r["step"]: r for r in metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))}


def test_cooldown_branch_continues_the_parent_exactly_under_its_own_schedule(tmp_path, tiny_corpus):
  """A constant-lr parent (4 steps, checkpoints at 2 and 4) and a WSD branch from its step 2 whose
  decay starts there (decay_fraction 0.5 of 4 steps): the branch's update 3 runs at lr, as the
  parent's, and update 4 at lr (1 - sqrt(1/2)).

  Catches: the parameters, Adam's moments or count, or the data position not taken from the
  parent (the losses at steps 3 and 4, bit-identical, and the moments at step 4 would differ:
  they depend on the gradients only, not on the lr), the branch keeping the parent's schedule
  (its params at step 4 would equal the parent's), the parent not recorded, a branch that has
  checkpoints of its own branching again, and the refusals not naming what is wrong."""
  from train import checkpoint as ckpt_lib
  from train.config import ConfigError

  common = {"train.steps": 4, "checkpoint.every_steps": 2, "train.eval_every": 1000}
  parent, branch = str(tmp_path / "parent"), str(tmp_path / "branch")
  pretrain.train(tiny_config(tiny_corpus, **common, **{"train.schedule": "constant"}), parent)
  cooldown = {**common, "train.schedule": "wsd", "train.decay_fraction": 0.5,
              "train.init_from": f"{parent}:2"}
  for bad, needle in [({"train.init_from": f"{tmp_path}/none:2"}, "holds no run"),
                      ({"train.init_from": f"{parent}:3"}, "no checkpoint at step 3; its saved steps: 2, 4"),
                      ({"model.d_model": 64}, "model.d_model: saved 32, requested 64"),
                      ({"train.batch_size": 16}, "train.batch_size: saved 8, requested 16")]:
    with pytest.raises(ConfigError, match=needle):
      pretrain.train(tiny_config(tiny_corpus, **{**cooldown, **bad}), str(tmp_path / "refused"))

  summary = pretrain.train(tiny_config(tiny_corpus, **cooldown), branch)
  assert summary["start_step"] == 2
  ours, theirs = _records(branch), _records(parent)
  assert sorted(ours) == [3, 4]
  assert [ours[s]["loss"] for s in (3, 4)] == [theirs[s]["loss"] for s in (3, 4)]
  lr = tiny_config("").train.lr
  assert (ours[3]["lr"], theirs[4]["lr"]) == pytest.approx((lr, lr))
  assert ours[4]["lr"] == pytest.approx(lr * (1 - 0.5**0.5))
  assert json.load(open(os.path.join(branch, "config.json")))["parent"] == {
      "workdir": os.path.abspath(parent), "step": 2}

  a, b = (ckpt_lib.read_step(os.path.join(d, "checkpoints"), 4, None)[0] for d in (parent, branch))
  adam_a, adam_b = (jax.tree.leaves(s["opt_state"]) for s in (a, b))
  assert all(np.array_equal(x, y) for x, y in zip(adam_a, adam_b))  # moments and count
  assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a["params"]),
                                                      jax.tree.leaves(b["params"])))
  # Its own checkpoints now: init_from is ignored (a parent that no longer exists included).
  again = pretrain.train(tiny_config(tiny_corpus, **{**cooldown, "train.steps": 5,
                                                 "train.init_from": f"{tmp_path}/gone:2"}), branch)
  assert again["start_step"] == 4 and again["final_step"] == 5
  assert json.load(open(os.path.join(branch, "config.json")))["parent"]["step"] == 2


def test_meter_rates_cover_the_steps_since_the_last_reading(monkeypatch):
  """Catches: a rate over the wrong interval (from the first reading, or across a restart), a
  first step (or a step reported at once after the previous one) with no rate, steps not reset
  after a reading, tokens per second or MFU inverted, step time per reading rather than per
  step."""
  now = [10.0]
  monkeypatch.setattr(pretrain.time, "perf_counter", lambda: now[0])
  meter = pretrain.Meter(tokens_per_step=100, train_flops_per_token=6.0, peak_flops=1200.0)
  assert meter.read(0) == {}  # nothing dispatched yet
  meter.count(4)  # a run resumed at step 4: its first step (and compilation) starts the interval
  meter.count(5)  # the next dispatch, before step 5 is read, moves nothing
  now[0] = 12.0
  assert meter.read(5) == {"tokens_per_sec": 50.0, "step_time_s": 2.0, "mfu": 0.25}
  now[0] = 13.0  # an evaluation: 1 s that is not training
  meter.restart()
  meter.count(6)
  now[0] = 14.0
  assert meter.read(7) == {"tokens_per_sec": 200.0, "step_time_s": 0.5, "mfu": 1.0}
  now[0] = 14.25  # step 8 reported at once after step 7 (an evaluation step): its own 0.25 s
  assert meter.read(8)["step_time_s"] == 0.25
  now[0] = 15.0
  assert meter.read(8) == {}  # no step since the last reading


def test_config_json_records_the_resolved_mesh_and_devices(tiny_run):
  """Catches: config.json keeping the mesh as asked ({'data': -1, ...}) rather than the axis
  sizes the run used, or leaving out the device kind (the 8 host CPU devices of conftest.py)."""
  saved = json.load(open(os.path.join(tiny_run, "config.json")))
  assert saved["sharding"]["mesh"]["data"] == -1  # what was asked stays as asked
  assert saved["resolved"] == {"mesh": {"data": 8, "fsdp": 1, "tensor": 1, "expert": 1},
                               "devices": {"count": 8, "kind": "cpu", "processes": 1}}


def test_profile_outside_the_runs_steps_warns_and_a_trace_says_where_it_went(tmp_path, capsys):
  """Catches: --profile_steps past the run's last step (or before a resumed run's first) tracing
  nothing without a word, and a trace written without saying where."""
  state = {"params": jax.numpy.zeros(2), "opt_state": jax.numpy.zeros(2)}
  hooks = loop.Hooks(report=lambda step, metrics, state: {}, save=lambda *a: None,
                     must_save=lambda step: False)
  step = lambda i, s: ({**s, "params": s["params"] + 1}, {"loss": 0.0})  # noqa: E731
  logdir = str(tmp_path / "profile")
  loop.run_steps(state, 2, 4, step, hooks, loop.Profile(5, 6, logdir))  # runs steps 3 and 4
  assert capsys.readouterr().out == ("warning: --profile_steps=5:6 is outside the steps this run "
                                     "takes (3 to 4); nothing is traced\n")
  assert not os.path.exists(logdir)
  loop.run_steps(state, 2, 4, step, hooks, loop.Profile(1, 3, logdir))  # resumed inside: 3 only
  out = capsys.readouterr().out
  (run,) = glob.glob(os.path.join(logdir, "plugins", "profile", "*"))
  assert out.startswith(f"profile: steps 3 to 3 traced into {run} (open its *.trace.json.gz "), out


def test_resuming_on_other_data_is_refused_unless_allowed(tiny_run, tmp_path):
  """Catches: a resume with other data.paths silently making new shards and validating on
  other rows, and a refusal that ignores data.allow_change or fires on the same data spelled
  as a list."""
  paths = json.load(open(os.path.join(tiny_run, "config.json")))["data"]["paths"]
  pretrain.resolve_settings(tiny_config(f" {paths}, "), tiny_run)  # the same data: resumes
  other = str(tmp_path / "*.txt")
  with pytest.raises(config_lib.ConfigError, match="^" + re.escape(
      f"workdir {tiny_run} trained on other data (data.paths: saved ['{paths}'], requested "
      f"['{other}']); use a new --workdir, or --config.data.allow_change=True to go on")):
    pretrain.resolve_settings(tiny_config(other), tiny_run)
  pretrain.resolve_settings(tiny_config(other, **{"data.allow_change": True}), tiny_run)
