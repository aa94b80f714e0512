"""The scaling study end to end on tiny grids (cosine per point and WSD cooldowns), its report on
synthetic runs, and the MoE against dense study: in a file of their own so the suite's two
workers share the study tests evenly."""

import json
import os

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


