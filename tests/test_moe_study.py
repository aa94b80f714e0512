"""The MoE against dense study (experiments/moe_vs_dense.py): learning rate per arm, seeds,
ablations, intervals, the end-to-end run."""

import json
import os

import numpy as np

from tests.helpers import run_script
from train.studies import sweep


def test_moe_vs_dense_aggregates_each_arm_over_its_seeds_and_pairs_seeds_across_arms():
  from train.studies import moe_comparison

  out = moe_comparison.aggregate({"dense": {0: 4.0, 1: 4.2, 2: 4.1}, "E8-k2": {2: 3.8, 0: 3.9, 1: 4.3}})
  dense, moe = out["arms"]["dense"], out["arms"]["E8-k2"]
  assert np.isclose(dense["mean"], 4.1) and np.isclose(dense["std"], 0.1)  # ddof 1
  assert np.isclose(dense["ci95"], 4.302653 * 0.1 / np.sqrt(3))  # t(0.975, 2 dof)
  assert np.isclose(moe["mean"], 4.0) and np.isclose(moe["std"], np.std([3.9, 4.3, 3.8], ddof=1))
  assert (moe["min"], moe["max"]) == (3.8, 4.3) and moe["values"] == [3.9, 4.3, 3.8]
  d = out["difference"]
  assert np.allclose([d["paired"][s] for s in "012"], [-0.1, 0.1, -0.3])  # same seed, not same rank
  assert np.isclose(d["mean"], -0.1) and np.isclose(d["paired_std"], 0.2)
  assert np.isclose(d["paired_ci95"], 4.302653 * 0.2 / np.sqrt(3))
  assert not d["lower_by_more_than_std"] and not d["ranges_separate"]
  clear = moe_comparison.aggregate({"dense": {0: 4.0, 1: 4.02}, "E8-k2": {0: 3.9, 1: 3.91}})
  assert clear["difference"]["lower_by_more_than_std"] and clear["difference"]["ranges_separate"]


def _done(root, p, loss):
  sweep.write_json(os.path.join(sweep.point_dir(str(root), p.name), sweep.RESULT),
                   {"name": p.name, "meta": p.meta, "eval_loss": loss})


def test_moe_vs_dense_chooses_each_arms_lr_on_validation_then_hands_out_seeds_and_ablations(tmp_path):
  """Catches: one lr for both arms, the lr chosen by the test loss or by the wrong arm, the seeds
  stage before the sweep is done, an ablation run trained twice."""
  from experiments.configs import moe_vs_dense as config
  from train.studies import moe_comparison

  cfg = config.get_config()
  cfg.sweep.settings = ("E8-k2", "E16-k2")
  pts = moe_comparison.sweep_points(cfg)
  assert [(p.meta["setting"], p.meta["lr"]) for p in pts][:3] == [
      ("dense", 1.5e-3), ("dense", 3e-3), ("dense", 6e-3)]
  assert pts[3].overrides["model.moe.d_expert"] == cfg.base.model.d_ff // 2  # equal active
  loss = {("dense", 1.5e-3): 4.0, ("dense", 3e-3): 3.9, ("dense", 6e-3): 4.1,
          ("E8-k2", 1.5e-3): 3.95, ("E8-k2", 3e-3): 3.97, ("E8-k2", 6e-3): 3.99,
          ("E16-k2", 1.5e-3): 4.2, ("E16-k2", 3e-3): 4.2, ("E16-k2", 6e-3): 4.2}
  for p in pts[:-1]:
    _done(tmp_path, p, loss[p.meta["setting"], p.meta["lr"]])
  assert moe_comparison.all_points(cfg, str(tmp_path)) == (pts, "", {})  # one sweep run pending
  _done(tmp_path, pts[-1], 4.2)
  points, setting, chosen = moe_comparison.all_points(cfg, str(tmp_path))
  assert setting == "E8-k2" and chosen["dense"] == 3e-3 and chosen["E8-k2"] == 1.5e-3
  assert points[:len(pts)] == pts
  new = [(p.meta["setting"], p.meta["seed"], p.meta["lr"], p.meta["variant"])
         for p in points[len(pts):]]
  assert new[:4] == [("E8-k2", 0, 1.5e-3, "init_standard"),  # seed 0: the others are sweep runs
                     ("dense", 1, 3e-3, ""), ("E8-k2", 1, 1.5e-3, ""),
                     ("E8-k2", 1, 1.5e-3, "init_standard")]
  assert ("E8-k2", 1, 3e-3, "") in new  # shared_lr: the MoE arm at dense's lr
  assert len(new) == 1 + 4 * 2 and len({p.name for p in points}) == len(points)
  assert points[len(pts)].overrides["model.moe.init_scale"] == "standard"


def test_moe_vs_dense_end_to_end_and_restarts_without_retraining(tmp_path, tiny_corpus):
  args = ["--config=experiments/configs/moe_vs_dense.py:tiny", f"--config.base.data.paths={tiny_corpus}",
          f"--workdir={tmp_path}", f"--out={tmp_path / 'out'}"]
  out = run_script("experiments.moe_vs_dense", *args)
  assert out.returncode == 0, out.stderr[-2000:]
  results = json.load(open(tmp_path / "out" / "results.json"))
  assert [r["setting"] for r in results["sweep"]] == ["dense", "E4-k2"] and results["complete"]
  assert results["compare"] == "E4-k2" and results["provenance"]["command"]
  recs = [json.load(open(p)) for p in tmp_path.glob("points/*/result.json")]
  test = {(r["meta"]["setting"], r["meta"]["seed"], r["meta"]["variant"]): r["test_loss"] for r in recs}
  assert len(test) == 4  # dense and E4-k2 at seeds 0 and 1
  s = results["seeds"]["test"]
  for arm in ("dense", "E4-k2"):
    assert s["arms"][arm]["values"] == [test[arm, 0, ""], test[arm, 1, ""]]
  assert np.isclose(s["difference"]["paired"]["1"], test["E4-k2", 1, ""] - test["dense", 1, ""])
  abl = results["seeds"]["ablations"]
  run = next(r for r in results["runs"].values() if r["setting"] == "E4-k2" and r["variant"] == "")
  assert run["final_eval_drop_fraction"] == 0.0 and run["test_train_dispatch_loss"] > 0
  assert abl["eval_dispatch_as_training"]["arms"]["E4-k2"]["values"][0] > 0
  assert len(results["expert_load"]["expert_share_eval_final"]) == 4
  row = results["sweep"][1]  # equal active parameters: the FLOPs of dense within a few %
  assert abs(row["analytic_flops_ratio_vs_dense"] - 1) < 0.05
  assert (tmp_path / "out" / "moe_vs_dense.png").exists()

  stamps = [os.stat(p).st_mtime_ns for p in sorted(tmp_path.glob("points/*/result.json"))]
  again = run_script("experiments.moe_vs_dense", *args, "--launcher=print")
  assert again.returncode == 0 and again.stdout == ""  # nothing pending, nothing printed
  assert [os.stat(p).st_mtime_ns for p in sorted(tmp_path.glob("points/*/result.json"))] == stamps
