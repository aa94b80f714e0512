"""The alignment study (experiments/alignment_study.py): stages in order, every choice read off
validation, a rerun that trains nothing, one tiny end-to-end run."""

import io
import json
import os
from contextlib import redirect_stdout

import pytest

from tests.helpers import run_script
from train.studies import alignment_study as study
from train.studies import sweep

TINY = "--config=experiments/configs/alignment_study.py:tiny"


def _config():
  from experiments.configs import alignment_study as config

  cfg = config.get_config()
  cfg.seeds, cfg.nll_weights = (0, 1), (0.0, 0.2, 1.0)
  cfg.grpo_max_steps, cfg.grpo_eval_every = 100, 50
  return cfg


def _done(root, p, **record):
  sweep.write_json(os.path.join(sweep.point_dir(str(root), p.name), sweep.RESULT),
                   {"name": p.name, "meta": p.meta, **record})


def test_the_choices_read_validation_pooled_over_seeds_never_test(tmp_path):
  """Catches: the NLL weight or the GRPO step chosen on test (here test disagrees with
  validation everywhere), per seed instead of the mean over seeds, a tie not going to the smaller
  weight / earlier step, a stage handed out before the one it starts from is done, and GRPO
  started from a DPO run of the wrong weight or seed."""
  cfg = _config()
  sft = [study.sft_point(cfg, s) for s in cfg.seeds]
  assert study.all_points(cfg, str(tmp_path)) == (sft, {})  # nothing done: SFT only
  _done(tmp_path, sft[0])
  assert study.all_points(cfg, str(tmp_path))[0] == sft  # one seed's SFT pending: no DPO yet
  _done(tmp_path, sft[1])
  points, choices = study.all_points(cfg, str(tmp_path))
  dpo = points[2:]
  assert [(p.meta["seed"], p.meta["nll_weight"], p.meta["init"]) for p in dpo] == [
      (s, w, sft[s].name) for s in cfg.seeds for w in cfg.nll_weights]
  assert not choices and all(p.overrides["train.seed"] == p.meta["seed"] for p in points)
  # Validation: seed 0 prefers 1.0, seed 1 prefers 0.2, their mean 0.2 (0.55 against 0.5);
  # test prefers 0.0 at both seeds.
  val = {(0, 0.0): 0.1, (0, 0.2): 0.4, (0, 1.0): 0.6, (1, 0.0): 0.1, (1, 0.2): 0.7, (1, 1.0): 0.4}
  for p in dpo:
    key = (p.meta["seed"], p.meta["nll_weight"])
    _done(tmp_path, p, validation_accuracy_end=val[key],
          test_accuracy_end=0.9 if key[1] == 0.0 else 0.2)
  points, choices = study.all_points(cfg, str(tmp_path))
  assert choices["nll_weight"]["value"] == 0.2
  grpo = points[8:]
  chosen = {p.meta["seed"]: p.name for p in dpo if p.meta["nll_weight"] == 0.2}
  assert [(p.meta["seed"], p.meta["init"]) for p in grpo] == [(0, chosen[0]), (1, chosen[1])]
  assert grpo[0].overrides["train.steps"] == 100 and grpo[0].overrides["checkpoint.every_steps"] == 50
  # Validation at steps 0, 50, 100: seed 0 peaks at 100, seed 1 at 50, their mean at 50 (0.6).
  curves = {0: [[0, 0.5], [50, 0.5], [100, 0.6]], 1: [[0, 0.5], [50, 0.7], [100, 0.5]]}
  for p in grpo:
    _done(tmp_path, p, validation_accuracy_curve=curves[p.meta["seed"]], test_accuracy_end=0.99)
  points, choices = study.all_points(cfg, str(tmp_path))
  assert choices["grpo_step"]["value"] == 50 and choices["complete"]
  assert [(p.meta["scores"], p.meta["at_step"]) for p in points[10:]] == [
      (grpo[0].name, 50), (grpo[1].name, 50)]


def test_ties_go_to_the_smaller_weight_and_the_earlier_step_and_step_0_scores_the_dpo_run():
  records = [{"meta": {"nll_weight": w}, "validation_accuracy_end": 0.5} for w in (1.0, 0.2)]
  assert study.choose_nll_weight(records)["value"] == 0.2
  flat = [{"validation_accuracy_curve": [[0, 0.4], [5, 0.4]]}]
  assert study.choose_grpo_step(flat)["value"] == 0
  p = study.scoring_point(0, 0, "grpo-run", "dpo-run")
  assert (p.meta["scores"], p.meta["at_step"]) == ("dpo-run", None)  # step 0: DPO's final


def test_a_changed_stage_setting_is_a_new_run():
  # Catches a point name that hashes only the study's overrides: a rerun after changing, say,
  # the GRPO learning rate would reuse the runs trained at the old one.
  cfg = _config()
  before = study.grpo_point(cfg, 0, "dpo-run").name
  cfg.grpo.train.lr = 3e-5
  assert study.grpo_point(cfg, 0, "dpo-run").name != before
  assert study.grpo_point(cfg, 0, "other-dpo-run").name != study.grpo_point(cfg, 0, "dpo-run").name


def test_bad_grids_are_one_line_errors():
  from train.config import ConfigError

  cfg = _config()
  cfg.grpo_max_steps = 120
  with pytest.raises(ConfigError, match="grpo_max_steps=120 must be a multiple of grpo_eval_every"):
    study.all_points(cfg, "unused")


def _never(*args):
  raise AssertionError("a done study trained or scored again")


def test_tiny_study_end_to_end_and_a_rerun_trains_nothing(tmp_path):
  """Catches: a stage that does not start from the run it names, a report without the choices,
  intervals or provenance, a test score at the chosen step that is not the stage's own scoring,
  and a rerun that retrains (file times change, or train_fn is called)."""
  from experiments.configs import alignment_study as config
  from train import checkpoint
  from train.align import stage as stage_lib

  root, out = str(tmp_path / "w"), str(tmp_path / "out")
  printed = io.StringIO()
  with redirect_stdout(printed):  # --launcher=print: the SFT commands, nothing trained
    assert study.run(config.get_config("tiny"), root, out, launcher="print", point="",
                     argv=["experiments/alignment_study.py", TINY], train_fn=_never,
                     score_fn=_never) is None
  assert printed.getvalue().count("--point=sft-s0-") == 1 and "launcher" not in printed.getvalue()

  proc = run_script("experiments.alignment_study", TINY, f"--workdir={root}", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
    results = json.load(f)
  assert {"commit", "dirty", "command", "config"} <= set(results["provenance"])
  assert set(results["choices"]) == {"nll_weight", "grpo_step"}
  assert results["choices"]["nll_weight"]["value"] in (0.0, 1.0)
  runs = results["runs"]
  assert [len(runs[s]) for s in ("sft", "dpo", "grpo")] == [1, 2, 1]
  grpo = runs["grpo"][0]
  assert [s for s, _ in grpo["validation_accuracy_curve"]] == [0, 1, 2]
  assert grpo["init"] == next(r["name"] for r in runs["dpo"]
                              if r["nll_weight"] == results["choices"]["nll_weight"]["value"])
  assert runs["dpo"][0]["init"] == runs["sft"][0]["name"]
  lo, hi = runs["sft"][0]["test_end"]["wilson95"]
  assert 0.0 <= lo <= runs["sft"][0]["test_end"]["accuracy"] <= hi and hi > 0  # n = 8
  assert results["test"]["grpo"]["arms"]["chosen_step"]["values"] == [
      results["grpo_test_at_chosen_step"]["0"]["accuracy"]]
  assert os.path.exists(os.path.join(out, "alignment_study.png"))

  # The kept checkpoint of every evaluation step scores as the run itself scored test: the final
  # step's completion lengths match the run's own test/completion_chars.
  grpo_dir = sweep.point_dir(root, grpo["name"])
  final = [json.loads(line) for line in open(os.path.join(grpo_dir, "metrics.jsonl"))
           if "test/completion_chars" in line][-1]
  scored = stage_lib.score_test(grpo_dir, 2)
  assert scored["examples"] == 8 and scored["accuracy"] == grpo["test_end"]["accuracy"]
  assert scored["completion_chars"] == pytest.approx(final["test/completion_chars"])
  assert checkpoint.saved_steps(os.path.join(grpo_dir, "checkpoints")) == [1, 2]  # all kept

  stamps = {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, names in os.walk(os.path.join(root, "points")) for f in names}
  again = study.run(config.get_config("tiny"), root, out, launcher="local", point="",
                    argv=["experiments/alignment_study.py", TINY], train_fn=_never, score_fn=_never)
  assert again["choices"] == results["choices"]
  assert stamps == {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
                    for d, _, names in os.walk(os.path.join(root, "points")) for f in names}
