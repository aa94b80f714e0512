"""The scaling study end to end on tiny grids (cosine per point and WSD cooldowns), its report on
synthetic runs, and the MoE against dense study: in a file of their own so the suite's two
workers share the study tests evenly."""

import json
import os

import numpy as np
import pytest

from tests.helpers import run_script
from train.studies import sweep


def _rows(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_scaling_sweep_runs_collects_and_restarts_without_retraining(tmp_path, tiny_corpus):
  args = ["--sweep=experiments/configs/sweeps/tiny.py", f"--sweep.base.data.paths={tiny_corpus}",
          f"--workdir={tmp_path}"]
  first = run_script("experiments.scaling", *args)
  assert first.returncode == 0, first.stderr[-2000:]
  rows = _rows(tmp_path / "results.jsonl")
  assert [r["D"] for r in rows] == [512, 1024] and all(r["eval_loss"] > 0 for r in rows)
  summary = json.load(open(tmp_path / "results.json"))
  assert summary["runs"] == 2 and summary["law"] is None  # 2 runs cannot fit 5 parameters
  assert (tmp_path / "loss_vs_flops.png").exists() and (tmp_path / "isoflop.png").exists()

  results = sorted(str(p) for p in tmp_path.glob("points/*/result.json"))
  stamps = [os.stat(p).st_mtime_ns for p in results]
  again = run_script("experiments.scaling", *args, "--launcher=print")
  assert again.returncode == 0 and again.stdout == ""  # nothing pending, nothing printed
  assert [os.stat(p).st_mtime_ns for p in results] == stamps


def test_scaling_report_fits_and_plots_synthetic_runs(tmp_path):
  from experiments.configs.sweeps import cpu_small
  from train.studies import scaling_fit, scaling_grid
  from train.studies import scaling_law as sl

  cfg = cpu_small.get_config()
  cfg.fit.grid, cfg.fit.bootstrap, cfg.fit.max_iter = "minimal", 0, 200  # bootstrap: tested elsewhere
  points = scaling_grid.make_points(cfg)
  law = sl.ChinchillaFit(E=1.5, A=60.0, B=300.0, alpha=0.3, beta=0.35)
  for p in points:
    cfg_p = sweep.point_config(cfg.base, p)
    from model.config import ModelConfig, count_params
    n = count_params(ModelConfig.from_dict(cfg_p.model.to_dict()))["non_embedding"]
    d = cfg_p.train.steps * cfg_p.train.batch_size * cfg_p.data.seq_len
    sweep.write_json(os.path.join(sweep.point_dir(str(tmp_path), p.name), sweep.RESULT), {
        "name": p.name, "meta": p.meta, "params": n, "params_non_embedding": n, "tokens": d,
        "flops_6nd": 6.0 * n * d, "flops": 6.0 * n * d, "loss": 0, "eval_loss": float(law.loss(n, d)),
        "wall_s": 1.0, "cpu_s": 1.0})
  summary = scaling_fit.report(str(tmp_path), points, cfg, str(tmp_path / "out"))
  assert summary["runs"] == len(points)
  assert abs(summary["law"]["alpha"] - 0.3) < 0.05 and abs(summary["law"]["beta"] - 0.35) < 0.05
  assert len(summary["plots"]) == 2 and all(os.path.exists(p) for p in summary["plots"])


def test_wsd_scaling_sweep_branches_cooldowns_from_one_stable_run(tmp_path, tiny_corpus):
  """End to end: the stable run keeps the checkpoints its cooldowns branch from (not only the
  newest), each cooldown starts from its parent's step and records it, the fit reads the test
  split's loss, and the compute counts the stable run once (a sweep that trained every point
  from scratch, or branched from the wrong step, would show other numbers)."""
  import random

  rng = random.Random(1)  # 300 short documents more: held-out rows to halve, whatever the split
  extra = tmp_path / "extra.jsonl"
  extra.write_text("".join(json.dumps({"text": " ".join(rng.choice(["def", "x", "return", "alpha"])
                                                         for _ in range(40))}) + "\n"
                           for _ in range(300)), encoding="utf-8")
  args = ["--sweep=experiments/configs/sweeps/tiny_wsd.py",
          f"--sweep.base.data.paths={tiny_corpus},{extra}", f"--workdir={tmp_path / 'sweep'}"]
  done = run_script("experiments.scaling", *args)
  assert done.returncode == 0, done.stderr[-2000:]
  tmp_path = tmp_path / "sweep"
  stable = next(tmp_path.glob("points/L1-D16-stable-*"))
  assert sorted(int(p.name) for p in (stable / "checkpoints").iterdir() if p.name.isdigit()) == [4, 8]
  for steps, start in ((5, 4), (10, 8)):
    branch = next(p for p in tmp_path.glob("points/L1-D16-C*")
                  if json.load(open(p / "result.json"))["steps"] == steps)
    assert json.load(open(branch / "config.json"))["parent"] == {"workdir": str(stable), "step": start}
  rows = _rows(tmp_path / "results.jsonl")
  assert len(rows) == 2 and all(r["test_loss"] > 0 for r in rows)
  summary = json.load(open(tmp_path / "results.json"))
  assert summary["loss"] == "test_loss" and summary["accounting"] == "full"
  assert summary["compute"]["ratio"] == pytest.approx((8 + 1 + 2) / (5 + 10))
  assert summary["provenance"]["command"].startswith("python")


def test_moe_vs_dense_aggregates_each_arm_over_its_seeds_and_pairs_seeds_across_arms():
  from train.studies import moe_comparison

  out = moe_comparison.aggregate({"dense": {0: 4.0, 1: 4.2, 2: 4.1}, "E8-k2": {2: 3.8, 0: 3.9, 1: 4.3}})
  dense, moe = out["arms"]["dense"], out["arms"]["E8-k2"]
  assert np.isclose(dense["mean"], 4.1) and np.isclose(dense["std"], 0.1)  # ddof 1
  assert np.isclose(moe["mean"], 4.0) and np.isclose(moe["std"], np.std([3.9, 4.3, 3.8], ddof=1))
  assert (moe["min"], moe["max"]) == (3.8, 4.3) and moe["values"] == [3.9, 4.3, 3.8]
  d = out["difference"]
  assert np.allclose([d["paired"][s] for s in "012"], [-0.1, 0.1, -0.3])  # same seed, not same rank
  assert np.isclose(d["mean"], -0.1) and np.isclose(d["paired_std"], 0.2)
  assert not d["lower_by_more_than_std"] and not d["ranges_separate"]
  clear = moe_comparison.aggregate({"dense": {0: 4.0, 1: 4.02}, "E8-k2": {0: 3.9, 1: 3.91}})
  assert clear["difference"]["lower_by_more_than_std"] and clear["difference"]["ranges_separate"]


def test_moe_vs_dense_hands_out_the_seeds_stage_of_the_best_setting_once_the_sweep_is_done(tmp_path):
  from experiments.configs import moe_vs_dense as config
  from train.studies import moe_comparison

  cfg = config.get_config()
  cfg.sweep.settings = ("E8-k1", "E8-k2", "E16-k1", "E16-k2")
  sweep_points = moe_comparison.sweep_points(cfg)
  assert [p.meta["setting"] for p in sweep_points] == ["dense", "E8-k1", "E8-k2", "E16-k1", "E16-k2"]
  assert sweep_points[2].overrides["model.moe.d_expert"] == cfg.base.model.d_ff // 2  # equal active
  loss = {"dense": 4.0, "E8-k1": 3.95, "E8-k2": 3.9, "E16-k1": 3.97, "E16-k2": 4.1}
  for p in sweep_points[:-1]:
    sweep.write_json(os.path.join(sweep.point_dir(str(tmp_path), p.name), sweep.RESULT),
                     {"name": p.name, "meta": p.meta, "eval_loss": loss[p.meta["setting"]]})
  points, setting = moe_comparison.all_points(cfg, str(tmp_path))
  assert (points, setting) == (sweep_points, "")  # a sweep run pending: the seeds stage waits
  p = sweep_points[-1]
  sweep.write_json(os.path.join(sweep.point_dir(str(tmp_path), p.name), sweep.RESULT),
                   {"name": p.name, "meta": p.meta, "eval_loss": loss["E16-k2"]})
  points, setting = moe_comparison.all_points(cfg, str(tmp_path))
  assert setting == "E8-k2" and points[:5] == sweep_points
  assert [(p.meta["setting"], p.meta["seed"]) for p in points[5:]] == [
      ("dense", 1), ("E8-k2", 1), ("dense", 2), ("E8-k2", 2)]  # seed 0: the sweep's runs
  cfg.compare = "E16-k1"
  assert moe_comparison.all_points(cfg, str(tmp_path))[1] == "E16-k1"


def test_moe_vs_dense_end_to_end_and_restarts_without_retraining(tmp_path, tiny_corpus):
  args = ["--config=experiments/configs/moe_vs_dense.py:tiny", f"--config.base.data.paths={tiny_corpus}",
          f"--workdir={tmp_path}", f"--out={tmp_path / 'out'}"]
  out = run_script("experiments.moe_vs_dense", *args)
  assert out.returncode == 0, out.stderr[-2000:]
  results = json.load(open(tmp_path / "out" / "results.json"))
  assert [r["setting"] for r in results["sweep"]] == ["dense", "E4-k2"] and results["complete"]
  assert results["compare"] == "E4-k2" and results["compare_chosen_by"] == "sweep"
  loss = {(r["meta"]["setting"], r["meta"]["seed"]): r["eval_loss"]
          for r in map(json.load, map(open, tmp_path.glob("points/*/result.json")))}
  assert len(loss) == 4  # dense and E4-k2 at seeds 0 and 1: the sweep's seed-0 runs reused
  for arm in ("dense", "E4-k2"):
    s = results["seeds"]["arms"][arm]
    assert s["values"] == [loss[arm, 0], loss[arm, 1]]
    assert np.isclose(s["mean"], (loss[arm, 0] + loss[arm, 1]) / 2)
  assert np.isclose(results["seeds"]["difference"]["paired"]["1"], loss["E4-k2", 1] - loss["dense", 1])
  row = results["sweep"][1]  # equal active parameters: the FLOPs of dense within a few %
  assert abs(row["analytic_flops_ratio_vs_dense"] - 1) < 0.05
  assert (tmp_path / "out" / "moe_vs_dense.png").exists()

  stamps = [os.stat(p).st_mtime_ns for p in sorted(tmp_path.glob("points/*/result.json"))]
  again = run_script("experiments.moe_vs_dense", *args, "--launcher=print")
  assert again.returncode == 0 and again.stdout == ""  # nothing pending, nothing printed
  assert [os.stat(p).st_mtime_ns for p in sorted(tmp_path.glob("points/*/result.json"))] == stamps
