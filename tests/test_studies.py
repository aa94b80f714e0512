"""The three study scripts end to end on tiny grids, and the scaling report on synthetic runs."""

import json
import os

import numpy as np

from experiments import sweep
from tests.helpers import run_script


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
  from experiments import scaling
  from experiments.configs.sweeps import cpu_small
  from train import scaling_law as sl

  cfg = cpu_small.get_config()
  cfg.fit.grid, cfg.fit.bootstrap, cfg.fit.max_iter = "minimal", 0, 200  # bootstrap: tested elsewhere
  points = scaling.make_points(cfg)
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
  summary = scaling.report(str(tmp_path), points, cfg, str(tmp_path / "out"))
  assert summary["runs"] == len(points)
  assert abs(summary["law"]["alpha"] - 0.3) < 0.05 and abs(summary["law"]["beta"] - 0.35) < 0.05
  assert len(summary["plots"]) == 2 and all(os.path.exists(p) for p in summary["plots"])


def test_emergence_ladder_end_to_end(tmp_path):
  out = run_script("experiments.emergence", "--config=experiments/configs/emergence.py:tiny",
                   f"--workdir={tmp_path}")
  assert out.returncode == 0, out.stderr[-2000:]
  rows = _rows(tmp_path / "results.jsonl")
  assert sorted((r["n_layers"], r["digits"]) for r in rows) == [(1, 1), (1, 2), (2, 1), (2, 2)]
  for r in rows:
    assert 0 <= r["exact_match"] <= 1 and 0 <= r["token_accuracy"] <= 1
    assert r["token_edit_distance"] >= 0 and r["answer_logprob"] < 0
  assert (tmp_path / "emergence.png").exists() and (tmp_path / "results.json").exists()


def test_lost_in_middle_end_to_end_and_from_an_init_workdir(tmp_path):
  out = run_script("experiments.lost_in_middle", "--config=experiments/configs/lost_in_middle.py:tiny",
                   f"--workdir={tmp_path}")
  assert out.returncode == 0, out.stderr[-2000:]
  rows = _rows(tmp_path / "results.jsonl")
  # 2 variants x (k=2: positions 1, 2; k=5: positions 1, 5).
  assert len(rows) == 8 and {r["variant"] for r in rows} == {"after", "both"}
  assert all(0 <= r["accuracy"] <= 1 for r in rows) and (tmp_path / "lost_in_middle.png").exists()
  # One padded example per row (the corpus is far below one shard's 64M tokens).
  stream = np.load(next(tmp_path.glob("shared/*/data/src-*/train-00000.npy"))).astype(np.int64)
  eot = stream[-1]
  assert len(stream) % 49 == 0 and np.all(stream[48::49] == eot) and np.sum(stream == eot) == len(stream) // 49

  run = next(tmp_path.glob("points/*"))
  again = run_script("experiments.lost_in_middle", "--config=experiments/configs/lost_in_middle.py:tiny",
                     f"--workdir={tmp_path / 'eval'}", f"--init_workdir={run}")
  assert again.returncode == 0, again.stderr[-2000:]
  assert _rows(tmp_path / "eval" / "results.jsonl") == rows
