"""The WSD sweep's plan: budgets to steps, cooldown starts, the stable run's length, its cost."""

import ml_collections
import pytest

from train.studies import wsd_plan


def _size(label: str, flops_per_token: float, params: int) -> wsd_plan.Size:
  return wsd_plan.Size(label, {"model.d_model": params}, flops_per_token, params)


def test_decay_start_takes_the_last_fraction_and_at_least_one_step():
  # Catches an off-by-one in the start (80 vs 79/81) and a decay of zero steps on short runs.
  assert wsd_plan.decay_start(100, 0.2) == 80
  assert wsd_plan.decay_start(7, 0.2) == 6  # 1.4 rounds to 1 decay step
  assert wsd_plan.decay_start(10, 0.25) == 7  # 2.5 rounds half up to 3 (banker's rounding: 2)
  assert wsd_plan.decay_start(10, 0.01) == 9  # round(0.1) = 0, raised to one


def test_plan_turns_budgets_into_steps_and_branch_points():
  # Budget C at F FLOPs per token and T tokens per step is round(C / (F T)) steps: a swapped
  # F and T, or the window measured in steps instead of tokens per parameter, changes the rows.
  sizes = [_size("small", 10.0, 4), _size("big", 40.0, 16)]
  plans = wsd_plan.plan(sizes, [8000.0, 2000.0, 32000.0], tokens_per_step=2, decay_fraction=0.25,
                        min_steps=20, tokens_per_param=(1.0, 1000.0),
                        warmup_steps={"small": 2, "big": 2})
  small, big = plans
  assert [(c.budget, c.steps, c.start) for c in small.cooldowns] == [
      (2000.0, 100, 75), (8000.0, 400, 300), (32000.0, 1600, 1200)]
  # big: 2000 / 80 = 25 steps (50 tokens, 3.1 per parameter) is kept; all three fit the window.
  assert [(c.steps, c.start) for c in big.cooldowns] == [(25, 19), (100, 75), (400, 300)]
  assert small.stable_steps == 1200 and big.stable_steps == 300


def test_plan_drops_points_outside_the_window_and_short_runs():
  sizes = [_size("s", 1.0, 100)]
  plans = wsd_plan.plan(sizes, [100.0, 1000.0, 10000.0], tokens_per_step=1, decay_fraction=0.2,
                        min_steps=200, tokens_per_param=(1.0, 50.0), warmup_steps={"s": 1})
  # 100 steps is under min_steps; 10000 tokens is 100 per parameter, over the window.
  assert [c.budget for c in plans[0].cooldowns] == [1000.0]
  with pytest.raises(ValueError, match="no point"):
    wsd_plan.plan(sizes, [10.0], tokens_per_step=1, decay_fraction=0.2, min_steps=1,
                  tokens_per_param=(1.0, 2.0), warmup_steps={"s": 1})


def test_warmup_must_end_before_the_first_cooldown():
  with pytest.raises(ValueError, match="warmup of 80 steps does not end before"):
    wsd_plan.plan([_size("s", 1.0, 1)], [100.0], tokens_per_step=1, decay_fraction=0.2,
                  min_steps=1, tokens_per_param=(1.0, 1000.0), warmup_steps={"s": 80})


def test_compute_saved_counts_one_stable_run_and_the_cooldowns():
  # By hand: steps 100 and 200, decay 0.2 -> starts 80 and 160. WSD trains 160 stable steps plus
  # 20 + 40 cooldown steps = 220; from scratch 100 + 200 = 300. Counting the stable run once per
  # budget, or the cooldowns from 0, would give other numbers.
  plans = wsd_plan.plan([_size("s", 3.0, 1)], [100.0 * 3, 200.0 * 3], tokens_per_step=1,
                        decay_fraction=0.2, min_steps=1, tokens_per_param=(1.0, 1000.0),
                        warmup_steps={"s": 1})
  saved = wsd_plan.compute_saved(plans, tokens_per_step=1)
  assert (saved["wsd_steps"], saved["scratch_steps"]) == (220, 300)
  assert saved["wsd_flops"] == 3.0 * 220 and saved["flops_ratio"] == pytest.approx(220 / 300)


def test_points_run_stable_first_and_branch_from_its_checkpoints(tmp_path):
  base = ml_collections.ConfigDict({
      "model": {"d_model": 0},
      "train": {"steps": 0, "warmup_steps": 0, "schedule": "cosine", "decay_fraction": 0.2,
                "decay_shape": "1-sqrt", "init_from": "", "lr": 1e-3},
      "checkpoint": {"keep_steps": ()}})
  plans = wsd_plan.plan([_size("a", 1.0, 1), _size("b", 2.0, 2)], [100.0, 400.0],
                        tokens_per_step=1, decay_fraction=0.2, min_steps=1,
                        tokens_per_param=(1.0, 1000.0), warmup_steps={"a": 3, "b": 3})
  pts = wsd_plan.points(plans, base, str(tmp_path), decay_fraction=0.2, decay_shape="1-sqrt",
                        warmup_steps={"a": 3, "b": 3}, extra={"train.lr": 0.01})
  roles = [p.meta["role"] for p in pts]
  assert roles == ["stable", "stable", "cooldown", "cooldown", "cooldown", "cooldown"]
  stable_a = pts[0]
  assert stable_a.overrides["train.schedule"] == "constant"
  assert stable_a.overrides["train.steps"] == 320  # the largest start: 400 - 80
  assert stable_a.overrides["checkpoint.keep_steps"] == (80, 320)
  branch = next(p for p in pts if p.meta["role"] == "cooldown" and p.meta["label"] == "a"
                and p.meta["budget"] == 400.0)
  assert branch.overrides["train.init_from"] == f"{tmp_path}/points/{stable_a.name}:320"
  assert branch.overrides["train.steps"] == 400 and branch.overrides["train.schedule"] == "wsd"
  assert branch.overrides["train.lr"] == 0.01 and branch.overrides["train.warmup_steps"] == 3


def test_a_larger_budget_extends_the_same_stable_run(tmp_path):
  """Catches a stable run renamed (retrained from scratch) when a budget is added, its saved
  config refused for the longer train.steps, and a finished shorter run not reopened."""
  from train.studies import sweep as sweep_lib

  base = ml_collections.ConfigDict({
      "model": {"d_model": 0},
      "train": {"steps": 0, "warmup_steps": 0, "schedule": "cosine", "decay_fraction": 0.2,
                "decay_shape": "1-sqrt", "init_from": ""},
      "checkpoint": {"keep_steps": ()}})
  kw = dict(tokens_per_step=1, decay_fraction=0.2, min_steps=1, tokens_per_param=(1.0, 1e6),
            warmup_steps={"a": 1})
  small = wsd_plan.points(wsd_plan.plan([_size("a", 1.0, 1)], [100.0], **kw), base,
                          str(tmp_path), decay_fraction=0.2, decay_shape="1-sqrt",
                          warmup_steps={"a": 1})
  large = wsd_plan.points(wsd_plan.plan([_size("a", 1.0, 1)], [100.0, 1000.0], **kw), base,
                          str(tmp_path), decay_fraction=0.2, decay_shape="1-sqrt",
                          warmup_steps={"a": 1})
  assert small[0].name == large[0].name  # one stable run per size, whatever its length
  assert small[0].overrides["train.steps"] == 80 and large[0].overrides["train.steps"] == 800
  workdir = tmp_path / "points" / small[0].name
  workdir.mkdir(parents=True)
  saved = sweep_lib.point_config(base, small[0])
  (workdir / "config.json").write_text(saved.to_json())
  (workdir / "result.json").write_text('{"steps": 80}')
  sweep_lib.check_points(str(tmp_path), base, large)  # the longer stable run is the same run
  assert wsd_plan.reopen_extended(str(tmp_path), small) == []  # as long as asked: stays done
  assert wsd_plan.reopen_extended(str(tmp_path), large) == [small[0].name]
  assert not (workdir / "result.json").exists() and (workdir / "result.80.json").exists()
  other = dict(large[0].overrides, **{"model.d_model": 2})
  changed = sweep_lib.make_point("a-stable", base, other, large[0].meta, grows=wsd_plan.GROWS)
  (workdir.parent / changed.name).mkdir()
  (workdir.parent / changed.name / "config.json").write_text(saved.to_json())
  with pytest.raises(ValueError, match="model.d_model: saved 1, requested 2"):
    sweep_lib.check_points(str(tmp_path), base, [changed])


def test_a_scheduler_gets_a_cooldown_only_once_its_stable_run_is_done(tmp_path):
  # Catches cooldowns handed to a job array beside their stable run (they would start before
  # the checkpoint they branch from exists), and stable runs held back.
  base = ml_collections.ConfigDict({
      "model": {"d_model": 0},
      "train": {"steps": 0, "warmup_steps": 0, "schedule": "cosine", "decay_fraction": 0.2,
                "decay_shape": "1-sqrt", "init_from": ""},
      "checkpoint": {"keep_steps": ()}})
  plans = wsd_plan.plan([_size("a", 1.0, 1), _size("b", 2.0, 2)], [100.0, 400.0],
                        tokens_per_step=1, decay_fraction=0.2, min_steps=1,
                        tokens_per_param=(1.0, 1e6), warmup_steps={"a": 1, "b": 1})
  pts = wsd_plan.points(plans, base, str(tmp_path), decay_fraction=0.2, decay_shape="1-sqrt",
                        warmup_steps={"a": 1, "b": 1})
  assert [p.meta["role"] for p in wsd_plan.ready(str(tmp_path), pts)] == ["stable", "stable"]
  done = tmp_path / "points" / pts[0].name
  done.mkdir(parents=True)
  (done / "result.json").write_text('{"steps": 320}')
  ready = wsd_plan.ready(str(tmp_path), pts)
  assert [p.meta["label"] for p in ready if p.meta["role"] == "cooldown"] == ["a", "a"]
