"""train/studies/sweep.py: restarts skip finished runs and resume the interrupted one; launchers."""

import io
import json
import os
import subprocess

import pytest

from train.studies import sweep
from tests.helpers import tiny_config


def _points(base):
  return [sweep.make_point(f"p{i}", base, {"model.d_model": 16 * (i + 1), "train.steps": 4 + i},
                           {"i": i}) for i in range(3)]


class FakeTrainer:
  """Stands in for train.pretrain.train: 'trains' by writing its step to the workdir, resumes from
  it, and can be told to stop (as on SIGTERM) at a step of one run."""

  def __init__(self, stop_at=None):
    self.calls, self.stop_at = [], stop_at

  def __call__(self, config, workdir):
    path = os.path.join(workdir, "step.json")
    start = json.load(open(path))["step"] if os.path.exists(path) else 0
    self.calls.append((os.path.basename(workdir), start))
    step = start
    while step < config.train.steps:
      if self.stop_at and self.stop_at == (os.path.basename(workdir)[:2], step):
        json.dump({"step": step}, open(path, "w"))
        return {"start_step": start, "final_step": step, "stopped_by_signal": "SIGTERM"}
      step += 1
    json.dump({"step": step}, open(path, "w"))
    loss = 5.0 / config.model.d_model + 1.0 / step  # a pure function of the settings
    return {"start_step": start, "final_step": step, "loss": loss, "eval_loss": loss + 0.1}


def _stable(record):
  return {k: v for k, v in record.items() if k not in ("wall_s", "cpu_s", "finished_at", "resumed_from_step")}


def test_interrupted_sweep_resumes_and_gives_the_same_results(tmp_path, tiny_corpus):
  base = tiny_config(tiny_corpus)
  points = _points(base)
  ref_root, root = str(tmp_path / "ref"), str(tmp_path / "run")
  assert sweep.launch(ref_root, base, points, launcher="local", point="", argv=["x.py"],
                      job_name="t", train_fn=FakeTrainer(), log=lambda _: None)

  interrupted = FakeTrainer(stop_at=("p1", 2))
  assert not sweep.launch(root, base, points, launcher="local", point="", argv=["x.py"],
                          job_name="t", train_fn=interrupted, log=lambda _: None)
  assert [c[0][:2] for c in interrupted.calls] == ["p0", "p1"]
  assert [p.name[:2] for p in sweep.pending(root, points)] == ["p1", "p2"]

  again = FakeTrainer()
  assert sweep.launch(root, base, points, launcher="local", point="", argv=["x.py"],
                      job_name="t", train_fn=again, log=lambda _: None)
  assert [(c[0][:2], c[1]) for c in again.calls] == [("p1", 2), ("p2", 0)]  # p0 not retrained
  got, want = sweep.collect(root, points), sweep.collect(ref_root, points)
  assert [_stable(r) for r in got] == [_stable(r) for r in want] and len(got) == 3

  finished = FakeTrainer()
  assert sweep.launch(root, base, points, launcher="local", point="", argv=["x.py"],
                      job_name="t", train_fn=finished, log=lambda _: None)
  assert finished.calls == []


def test_point_names_follow_the_overrides(tiny_corpus):
  base = tiny_config(tiny_corpus)
  a = sweep.make_point("p", base, {"train.steps": 4}, {})
  assert a == sweep.make_point("p", base, {"train.steps": 4}, {})
  assert a.name != sweep.make_point("p", base, {"train.steps": 5}, {}).name
  with pytest.raises(ValueError, match="no setting"):
    sweep.make_point("p", base, {"train.stepz": 4}, {})


def test_a_run_trained_with_other_settings_is_refused_not_reused(tmp_path, tiny_corpus):
  base = tiny_config(tiny_corpus)
  points = _points(base)
  root = str(tmp_path)
  saved = json.loads(sweep.point_config(base, points[0]).to_json())
  saved["model"]["a_setting_added_later"] = 1  # the config tree grew: not a conflict
  saved["sharding"] = {"mesh": {"data": 4}}  # where it ran: not a conflict
  sweep.write_json(os.path.join(sweep.point_dir(root, points[0].name), "config.json"), saved)
  sweep.check_points(root, base, points)
  saved["train"]["lr"] = 0.5
  sweep.write_json(os.path.join(sweep.point_dir(root, points[0].name), "config.json"), saved)
  with pytest.raises(ValueError, match="train.lr: saved 0.5"):
    sweep.launch(root, base, points, launcher="local", point="", argv=["x.py"], job_name="t",
                 train_fn=FakeTrainer(), log=lambda _: None)


def _argv():
  # The real script path, not one built from sweep.REPO_ROOT: a wrong root must show in the module.
  import experiments.scaling
  return [experiments.scaling.__file__, "--workdir=w",
          "--launcher=print", "--sweep.fit.bootstrap=3"]


def test_print_launcher_prints_one_command_per_pending_point(tmp_path, tiny_corpus):
  base = tiny_config(tiny_corpus)
  points = _points(base)
  root = str(tmp_path / "run")
  sweep.write_json(os.path.join(sweep.point_dir(root, points[1].name), sweep.RESULT), {"name": "done"})
  out = io.StringIO()
  lines = sweep.print_commands(_argv(), sweep.pending(root, points), out=out)
  assert out.getvalue().splitlines() == lines and len(lines) == 2
  for line, p in zip(lines, (points[0], points[2])):
    assert " -m experiments.scaling --workdir=w --sweep.fit.bootstrap=3 " in line
    assert line.endswith(f"--point={p.name}") and "--launcher" not in line


def test_slurm_launcher_writes_a_job_array_over_pending_points(tmp_path, tiny_corpus):
  base = tiny_config(tiny_corpus)
  points = _points(base)
  path = sweep.write_slurm(str(tmp_path), _argv(), points, job_name="llmlab-test",
                           options=("--gres=gpu:1",))
  text = open(path).read()
  assert "#SBATCH --array=0-2" in text and "#SBATCH --gres=gpu:1" in text
  assert "POINTS=(" + " ".join(p.name for p in points) + ")" in text
  assert text.rstrip().endswith('--point="${POINTS[$SLURM_ARRAY_TASK_ID]}"')
  assert subprocess.run(["bash", "-n", path]).returncode == 0


def test_collect_leaves_out_runs_of_other_settings(tmp_path, tiny_corpus):
  base = tiny_config(tiny_corpus)
  points = _points(base)
  root = str(tmp_path)
  for name in (points[0].name, "p9-deadbeef"):
    sweep.write_json(os.path.join(sweep.point_dir(root, name), sweep.RESULT), {"name": name})
  assert [r["name"] for r in sweep.collect(root, points)] == [points[0].name]


def test_launch_records_computes_each_point_once_and_hands_out_the_pending(tmp_path, capsys):
  points = [sweep.Point(f"p{i}-abc", {}, {"i": i}) for i in range(3)]
  root, calls = str(tmp_path), []

  def compute(p):
    calls.append(p.name)
    return {"square": p.meta["i"] ** 2}

  kw = dict(argv=_argv(), job_name="t", log=lambda _: None)
  assert not sweep.launch_records(root, points, compute, launcher="local", point="p1-abc", **kw)
  assert sweep.load_result(root, "p1-abc")["square"] == 1 and calls == ["p1-abc"]
  assert not sweep.launch_records(root, points, compute, launcher="print", point="", **kw)
  printed = capsys.readouterr().out.splitlines()
  assert [line.rsplit("--point=", 1)[1] for line in printed] == ["p0-abc", "p2-abc"]
  assert sweep.launch_records(root, points, compute, launcher="local", point="", **kw)
  assert calls == ["p1-abc", "p0-abc", "p2-abc"]  # the finished point was not computed again
  assert [r["square"] for r in sweep.collect(root, points)] == [0, 1, 4]


def test_print_launcher_with_pending_points_prints_at_once_and_asks_for_no_report(
    tmp_path, tiny_corpus, monkeypatch, capsys):
  """Catches: --launcher=print tokenizing the corpus before it prints, and asking its study to
  fit the finished points (minutes of CPU) while others are still pending."""
  import types

  base = tiny_config(tiny_corpus)
  points = _points(base)
  root = str(tmp_path / "run")
  sweep.write_json(os.path.join(sweep.point_dir(root, points[1].name), sweep.RESULT), {"name": "done"})

  def no_prepare(*args):
    raise AssertionError("prepared the shared data before printing")

  monkeypatch.setattr(sweep, "prepare_shared", no_prepare)
  monkeypatch.setattr(sweep.sys, "argv", _argv())
  fv = types.SimpleNamespace(workdir=root, launcher="print", point="")
  launch_cfg = types.SimpleNamespace(job_name="t", slurm_options=())
  assert sweep.launch_training_study(fv, base, points, launch_cfg) is False  # no fit follows
  lines = capsys.readouterr().out.splitlines()
  assert [line.rsplit("--point=", 1)[1] for line in lines] == [points[0].name, points[2].name]


# --stack_runs: points that differ only in train.seed / lr / weight_decay / grad_clip train as one
# stack (train/stacked_pretrain.py), each in its own workdir as if alone.

def _lr_points(base, shapes=(32,)):
  """Per width, two runs that differ in every stacked setting: seed, lr, weight decay, clip."""
  runs = [(0, 3e-3, 0.0, 1.0), (1, 3e-2, 0.3, 0.05)]
  return [sweep.make_point(f"w{d}-r{k}", base, {
      "model.d_model": d, "train.seed": s, "train.lr": lr, "train.weight_decay": wd,
      "train.grad_clip": c}, {"k": k}) for d in shapes for k, (s, lr, wd, c) in enumerate(runs)]


def test_points_stack_only_where_nothing_but_per_run_settings_differ(tiny_corpus):
  base = tiny_config(tiny_corpus)
  points = _lr_points(base, shapes=(32, 16)) + [
      sweep.make_point("branch", base, {"train.init_from": "/elsewhere:2"}, {})]
  groups = sweep.stack_groups(base, points, most=8)
  assert [[p.name[:6] for p in g] for g in groups] == [["w32-r0", "w32-r1"], ["w16-r0", "w16-r1"],
                                                       ["branch"]]
  assert [len(g) for g in sweep.stack_groups(base, points, most=1)] == [1] * 5


def test_stack_runs_is_refused_where_it_cannot_apply(tmp_path, tiny_corpus):
  base = tiny_config(tiny_corpus)
  for launcher, point, n in [("print", "", 2), ("local", "x", 2), ("local", "", -1)]:
    with pytest.raises(ValueError, match="--stack_runs"):
      sweep.launch(str(tmp_path), base, _lr_points(base), launcher=launcher, point=point,
                   argv=["x.py"], job_name="t", stack_runs=n, log=lambda _: None)


def test_a_stacked_group_trains_each_point_as_the_sweep_trains_it_alone(tmp_path, tiny_corpus):
  """Each point's metrics.jsonl (loss, lr, grad_norm every step; eval_loss), checkpoint and
  result.json equal those of the same point trained alone through the sweep. A stack that gave
  run 1 run 0's lr, decay, clip or seed, fed it run 0's data, or wrote run 0's metrics into run
  1's workdir fails here: the two runs differ in all of those."""
  from train import metrics as metrics_lib

  base = tiny_config(tiny_corpus, **{  # as small as a run gets: its cost is compiles and files
      "train.steps": 2, "train.eval_every": 2, "train.warmup_steps": 1, "train.eval_batches": 1,
      "train.loggers": ("jsonl",), "model.n_layers": 1,
      "checkpoint.every_steps": 2})
  points = _lr_points(base, shapes=(16,))
  alone, stacked_root = str(tmp_path / "alone"), str(tmp_path / "stacked")
  kw = dict(launcher="local", point="", argv=["x.py"], job_name="t", log=lambda _: None)
  assert sweep.launch(alone, base, points, **kw)
  assert sweep.launch(stacked_root, base, points, stack_runs=2, **kw)
  losses = []
  for p in points:
    want = metrics_lib.by_step(sweep.point_dir(alone, p.name))
    got = metrics_lib.by_step(sweep.point_dir(stacked_root, p.name))
    assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2]
    for g, w in zip(got, want):
      for key in ("loss", "lr", "grad_norm", "eval_loss"):
        if key in w or key in g:
          assert g[key] == pytest.approx(w[key], rel=2e-5), (p.name, g["step"], key)
    a, b = sweep.load_result(alone, p.name), sweep.load_result(stacked_root, p.name)
    assert b["stacked_with"] == [q.name for q in points] and "stacked_with" not in a
    assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=2e-5)
    assert os.listdir(os.path.join(sweep.point_dir(stacked_root, p.name), "checkpoints"))
    losses.append(a["loss"])
  assert abs(losses[0] - losses[1]) > 1e-3  # the runs differ: a mix-up cannot pass unseen
  # Done points are not retrained.
  assert sweep.launch(stacked_root, base, points, stack_runs=2,
                      train_group_fn=lambda *a: pytest.fail("retrained"), **kw)


def test_train_group_refuses_runs_that_cannot_stack_in_one_line(tiny_corpus):
  from train import config as config_lib
  from train import stacked_pretrain

  base = tiny_config(tiny_corpus)
  def configs(*overrides):
    return [sweep.apply_overrides(base, o) for o in overrides]
  for overrides, message in [
      (({"train.lr": 1e-3}, {"model.d_model": 64}), "model.* differs"),
      (({"train.lr": 1e-3}, {"train.steps": 7}), "train.steps differs"),
      (({"train.init_from": "/x:2"}, {"train.init_from": "/x:2", "train.lr": 1e-3}),
       "train.init_from"),
  ]:
    cs = configs(*overrides)
    with pytest.raises(config_lib.ConfigError, match=message):
      stacked_pretrain.check_group(cs, [config_lib.resolve(c) for c in cs])
  cs = configs({"train.lr": 1e-3, "train.seed": 3}, {"train.grad_clip": 0.5})
  stacked_pretrain.check_group(cs, [config_lib.resolve(c) for c in cs])  # per-run settings only
