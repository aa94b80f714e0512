"""The alignment study: SFT -> DPO -> GRPO at several seeds, every setting chosen on validation,
every reported number scored on test.

Stages of a restartable study of computations (train/studies/sweep.py launch_records; a point is
done when ROOT/points/NAME/result.json exists, and a point that is a training run trains in
ROOT/points/NAME, resuming from its newest checkpoint when rerun):

  1. sft   per seed: SFT from a fresh model, stopped on validation accuracy (the stage's stop);
  2. dpo   per seed and NLL weight of `nll_weights`, from that seed's SFT run;
           the weight: the highest final validation accuracy, mean over seeds (ties: the smaller);
  3. grpo  per seed, from that seed's DPO run at the chosen weight, `grpo_max_steps` steps with a
           checkpoint kept at every evaluation (`grpo_eval_every`); the step: the highest validation
           accuracy, mean over seeds (ties: the earlier; step 0 is the DPO policy itself);
  4. test  per seed: the test accuracy of the GRPO checkpoint at the chosen step (step 0: of the
           DPO run), scored by the stage's own evaluator (train/align/stage.py score_test).

A stage's points are known once the previous stage is done, so the print and slurm launchers hand
out one stage at a time (rerun to hand out the next). The choices pool seeds (a mean over them)
rather than choosing per seed, so no seed's choice is fitted to its own noise, and they read only
the validation problems; the test problems are scored at the start and end of every run and at
the chosen GRPO step, and nothing reads them to decide.

The training and the scoring are passed in (train_fn, score_fn: train/align/cli.py train_stage
and train/align/stage.py score_test, wired by experiments/alignment_study.py): train/studies does
not import train/align.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from typing import Callable, Optional, Sequence

import ml_collections

from train import config as config_lib
from train import plots
from train.studies import moe_comparison
from train.studies import retrieval_eval
from train.studies import sweep as sweep_lib

STAGES = ("sft", "dpo", "grpo")
# What a stage run's done record keeps of its results.json.
KEPT = ("final_step", "stopped_early", "validation_accuracy_curve", "validation_accuracy_end",
        "test_accuracy_start", "test_accuracy_end", "test_examples", "validation_examples",
        "wall_time_s_total")

# (stage, config, workdir, init_workdir) -> the run's results (train/align/cli.py train_stage)
TrainFn = Callable[[str, ml_collections.ConfigDict, str, str], dict]
# (workdir, step or None for the newest) -> {"accuracy", "examples", ...} on test
ScoreFn = Callable[[str, Optional[int]], dict]


class Stopped(Exception):
  """A stage run stopped by a signal (it saved a checkpoint): rerun the study to resume."""


def check(cfg: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the setting when the study's grids cannot run."""
  if not cfg.seeds:
    raise config_lib.ConfigError("seeds is empty; give at least one, e.g. --config.seeds='(0,)'")
  if not cfg.nll_weights:
    raise config_lib.ConfigError("nll_weights is empty; give at least one DPO NLL weight")
  if cfg.grpo_eval_every < 1 or cfg.grpo_max_steps % cfg.grpo_eval_every:
    raise config_lib.ConfigError(
        f"grpo_max_steps={cfg.grpo_max_steps} must be a multiple of grpo_eval_every="
        f"{cfg.grpo_eval_every} (a checkpoint is kept at every evaluation)")


def stage_config(cfg, stage: str, overrides: dict) -> ml_collections.ConfigDict:
  """The full config of one stage run: the study's cfg.<stage> with `overrides` set."""
  return sweep_lib.apply_overrides(cfg[stage], overrides)


def _point(cfg, stage: str, label: str, overrides: dict, meta: dict) -> sweep_lib.Point:
  """A stage run named label-<hash of its whole config and the run it starts from>: any change
  to the stage's config or to its starting run is a new run, never a silent reuse."""
  config = stage_config(cfg, stage, overrides)
  config_lib.resolve_stage(config, stage)  # a bad setting fails here, before anything runs
  key = json.dumps({"config": config.to_dict(), "init": meta.get("init", "")}, sort_keys=True,
                   default=str)
  return sweep_lib.Point(f"{label}-{hashlib.sha1(key.encode()).hexdigest()[:6]}", dict(overrides),
                         {"stage": stage, **meta})


def sft_point(cfg, seed: int) -> sweep_lib.Point:
  return _point(cfg, "sft", f"sft-s{seed}", {"train.seed": seed}, {"seed": seed})


def dpo_point(cfg, seed: int, weight: float, sft: str) -> sweep_lib.Point:
  return _point(cfg, "dpo", f"dpo-w{weight:g}-s{seed}",
                {"train.seed": seed, "dpo.nll_weight": float(weight)},
                {"seed": seed, "nll_weight": float(weight), "init": sft})


def grpo_point(cfg, seed: int, dpo: str) -> sweep_lib.Point:
  """GRPO for grpo_max_steps with a checkpoint at every evaluation, all of them kept."""
  every = cfg.grpo_eval_every
  over = {"train.seed": seed, "train.steps": cfg.grpo_max_steps, "train.eval_every": every,
          "checkpoint.every_steps": every, "checkpoint.keep": cfg.grpo_max_steps // every + 1}
  return _point(cfg, "grpo", f"grpo-s{seed}", over, {"seed": seed, "init": dpo})


def scoring_point(seed: int, step: int, grpo: str, dpo: str) -> sweep_lib.Point:
  """Scores the test set at GRPO's chosen step: its checkpoint there, or at step 0 the DPO run
  it started from (the same parameters)."""
  scores, at = (grpo, step) if step else (dpo, None)
  meta = {"stage": "test", "seed": seed, "grpo_step": step, "scores": scores, "at_step": at}
  key = hashlib.sha1(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:6]
  return sweep_lib.Point(f"test-s{seed}-step{step}-{key}", {}, meta)


def choose_nll_weight(records: Sequence[dict]) -> dict:
  """The DPO NLL weight with the highest final validation accuracy, mean over seeds (ties: the
  smaller weight), from done DPO records (meta.nll_weight, validation_accuracy_end)."""
  by_weight: dict[float, list[float]] = {}
  for r in records:
    by_weight.setdefault(r["meta"]["nll_weight"], []).append(r["validation_accuracy_end"])
  means = {w: sum(v) / len(v) for w, v in sorted(by_weight.items())}
  best = max(means, key=lambda w: means[w])  # the first maximum: the smallest weight of a tie
  return {"value": best, "chosen_on": "final validation accuracy (eval/accuracy at the last "
          "step), mean over seeds; ties: the smaller weight",
          "mean_final_validation_accuracy": {f"{w:g}": m for w, m in means.items()}}


def choose_grpo_step(records: Sequence[dict]) -> dict:
  """The GRPO step with the highest validation accuracy, mean over seeds, among the evaluation
  steps every seed has (ties: the earlier step), from done GRPO records
  (validation_accuracy_curve: [[step, accuracy], ...], step 0 the starting policy)."""
  curves = [dict((int(s), a) for s, a in r["validation_accuracy_curve"]) for r in records]
  steps = sorted(set.intersection(*(set(c) for c in curves)))
  if not steps:
    raise ValueError("the GRPO runs share no evaluation step; set grpo_eval_every")
  means = {s: sum(c[s] for c in curves) / len(curves) for s in steps}
  best = max(steps, key=lambda s: means[s])  # the first maximum: the earliest step of a tie
  return {"value": best, "chosen_on": "validation accuracy at each evaluation step, mean over "
          "seeds; ties: the earlier step",
          "mean_validation_accuracy": {str(s): m for s, m in means.items()}}


def all_points(cfg, root: str) -> tuple[list[sweep_lib.Point], dict]:
  """(every point known now, the choices made so far): each stage's points once the previous
  stage is done; the choices read validation only."""
  check(cfg)
  sft = {s: sft_point(cfg, s) for s in cfg.seeds}
  points, choices = list(sft.values()), {}
  if sweep_lib.pending(root, points):
    return points, choices
  dpo = {(s, w): dpo_point(cfg, s, w, sft[s].name) for s in cfg.seeds for w in cfg.nll_weights}
  points += dpo.values()
  if sweep_lib.pending(root, points):
    return points, choices
  choices["nll_weight"] = choose_nll_weight(sweep_lib.collect(root, list(dpo.values())))
  w = choices["nll_weight"]["value"]
  grpo = {s: grpo_point(cfg, s, dpo[s, w].name) for s in cfg.seeds}
  points += grpo.values()
  if sweep_lib.pending(root, points):
    return points, choices
  choices["grpo_step"] = choose_grpo_step(sweep_lib.collect(root, list(grpo.values())))
  step = choices["grpo_step"]["value"]
  points += [scoring_point(s, step, grpo[s].name, dpo[s, w].name) for s in cfg.seeds]
  choices["complete"] = True
  return points, choices


def compute_point(cfg, root: str, p: sweep_lib.Point, train_fn: TrainFn,
                  score_fn: ScoreFn) -> dict:
  """The done record of one point: a stage run trained (or resumed) in its own directory, or
  the test score at GRPO's chosen step."""
  stage = p.meta["stage"]
  if stage == "test":
    scored = score_fn(sweep_lib.point_dir(root, p.meta["scores"]), p.meta["at_step"])
    return {"test_accuracy": scored["accuracy"], "test_examples": scored["examples"]}
  init = sweep_lib.point_dir(root, p.meta["init"]) if p.meta.get("init") else ""
  result = train_fn(stage, stage_config(cfg, stage, p.overrides), sweep_lib.point_dir(root, p.name),
                    init)
  if result.get("stopped_by_signal"):
    raise Stopped(f"{p.name} stopped by a signal; rerun the same command to resume")
  return {k: result.get(k) for k in KEPT}


def run(cfg, root: str, out: str, *, launcher: str, point: str, argv: Sequence[str],
        train_fn: TrainFn, score_fn: ScoreFn) -> Optional[dict]:
  """Runs or hands out the pending points, stage after stage; once every stage is done writes
  OUT/results.json and the plot and returns the results (None while points are pending or when
  this invocation ran one point)."""
  points: list[sweep_lib.Point] = []
  choices: dict = {}
  for _ in range(len(STAGES) + 1):  # each pass makes the next stage known
    points, choices = all_points(cfg, root)
    done = sweep_lib.launch_records(
        root, points, lambda p: compute_point(cfg, root, p, train_fn, score_fn),
        launcher=launcher, point=point, argv=argv, job_name=cfg.launch.job_name,
        slurm_options=tuple(cfg.launch.slurm_options))
    if point or not done:
      return None
    if choices.get("complete"):
      return report(cfg, root, points, choices, out, argv)
  return None


def _accuracy(acc: Optional[float], n: Optional[int]) -> Optional[dict]:
  """An accuracy on n examples with its 95% Wilson interval."""
  if acc is None or not n:
    return None
  return {"accuracy": acc, "n": n, "wilson95": list(retrieval_eval.wilson(round(acc * n), n))}


def _run_row(r: dict) -> dict:
  """One stage run's row: its choice-making curve and its test accuracy at start and end."""
  n = r.get("test_examples")
  return {"name": r["name"], **r["meta"], "final_step": r["final_step"],
          "stopped_early": r.get("stopped_early"),
          "validation_accuracy_curve": r["validation_accuracy_curve"],
          "validation_accuracy_end": r["validation_accuracy_end"],
          "test_start": _accuracy(r["test_accuracy_start"], n),
          "test_end": _accuracy(r["test_accuracy_end"], n), "wall_time_s": r["wall_time_s_total"]}


def _over_seeds(first: dict[int, float], second: dict[int, float], names: tuple[str, str]) -> dict:
  """moe_comparison.aggregate of two accuracies per seed: each one's mean with its 95%
  t-interval over seeds, and the paired per-seed difference (second - first) with its own."""
  return moe_comparison.aggregate({names[0]: first, names[1]: second})


def report(cfg, root: str, points: Sequence[sweep_lib.Point], choices: dict, out_dir: str,
           argv: Sequence[str]) -> dict:
  """Writes OUT/results.json and OUT/alignment_study.png from the done points."""
  from train import provenance

  records = {r["name"]: r for r in sweep_lib.collect(root, points)}
  rows = {stage: [_run_row(records[p.name]) for p in points if p.meta["stage"] == stage]
          for stage in STAGES}
  w, step = choices["nll_weight"]["value"], choices["grpo_step"]["value"]
  chosen_dpo = [r for r in rows["dpo"] if r["nll_weight"] == w]
  tests = {records[p.name]["meta"]["seed"]: records[p.name] for p in points
           if p.meta["stage"] == "test"}
  grpo_test = {s: r["test_accuracy"] for s, r in tests.items()}
  end = lambda rs: {r["seed"]: r["test_end"]["accuracy"] for r in rs}  # noqa: E731
  start = lambda rs: {r["seed"]: r["test_start"]["accuracy"] for r in rs}  # noqa: E731
  results = {
      "study": "alignment_study", "provenance": provenance.provenance(cfg),
      "machine": sweep_lib.machine_info(), "seeds": list(cfg.seeds),
      "nll_weights": list(cfg.nll_weights),
      "grpo": {"max_steps": cfg.grpo_max_steps, "eval_every": cfg.grpo_eval_every},
      "choices": {k: v for k, v in choices.items() if k != "complete"},
      "runs": rows,
      "grpo_test_at_chosen_step": {
          str(s): {"step": step, **_accuracy(r["test_accuracy"], r["test_examples"])}
          for s, r in sorted(tests.items())},
      "test": {  # per stage over seeds: start -> end (GRPO's end: the chosen step), paired
          "sft": _over_seeds(start(rows["sft"]), end(rows["sft"]), ("start", "end")),
          "dpo": _over_seeds(start(chosen_dpo), end(chosen_dpo), ("start", "end")),
          "grpo": _over_seeds(start(rows["grpo"]), grpo_test, ("start", "chosen_step")),
          "chain": _over_seeds(start(rows["sft"]), grpo_test, ("sft_start", "grpo_chosen_step"))},
      "commands": {p.name: shlex.join(sweep_lib.point_command(argv, p.name)) for p in points},
      "wall_s_total": sum(r.get("wall_time_s_total") or r.get("wall_s") or 0.0
                          for r in records.values()),
  }
  os.makedirs(out_dir, exist_ok=True)
  sweep_lib.write_json(os.path.join(out_dir, "results.json"), results)
  results["plot"] = plot(results, out_dir)
  return results


def plot(results: dict, out_dir: str) -> str:
  """Four panels: SFT's, DPO's (per weight) and GRPO's validation curves per seed with the
  choices marked, and the test accuracy after each stage, mean over seeds with its interval."""
  plt = plots.pyplot()
  fig, axes = plt.subplots(1, 4, figsize=(22, 5))
  w = results["choices"]["nll_weight"]["value"]
  step = results["choices"]["grpo_step"]["value"]
  for ax, stage in zip(axes[:3], STAGES):
    for i, r in enumerate(results["runs"][stage]):
      steps, acc = zip(*r["validation_accuracy_curve"])
      label = f"seed {r['seed']}" + (f", NLL weight {r['nll_weight']:g}" if stage == "dpo" else "")
      style = "-" if stage != "dpo" or r["nll_weight"] == w else ":"
      ax.plot(steps, acc, style, color=plt.cm.tab10(i % 10), label=label, lw=1.2)
    ax.set(xlabel="step", ylabel="validation accuracy", title=f"{stage}: validation (chooses)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  axes[1].set_title(f"dpo: validation; chosen NLL weight {w:g} (solid)")
  axes[2].axvline(step, color="gray", ls="--", lw=1)
  axes[2].set_title(f"grpo: validation; chosen step {step} (dashed)")
  t = results["test"]
  names = ["SFT end", f"DPO end (w {w:g})", f"GRPO step {step}"]
  arms = [t["sft"]["arms"]["end"], t["dpo"]["arms"]["end"], t["grpo"]["arms"]["chosen_step"]]
  axes[3].bar(names, [a["mean"] for a in arms], yerr=[a["ci95"] or 0.0 for a in arms], capsize=4)
  for i, a in enumerate(arms):
    axes[3].plot([i] * len(a["values"]), a["values"], "k.", ms=5)
  axes[3].set(ylabel="test accuracy", title="test: mean over seeds, 95% t-interval (dots: seeds)")
  axes[3].grid(alpha=0.3, axis="y")
  path = os.path.join(out_dir, "alignment_study.png")
  plots.save(fig, path, dpi=110)
  return path
