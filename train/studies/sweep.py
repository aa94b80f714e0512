"""Restartable sweeps: a list of independent training runs, each in its own sub-workdir.

A study (experiments/scaling.py, emergence.py, lost_in_middle.py) turns its config into Points,
each a name and the overrides of one run. Layout of a sweep's workdir:

  ROOT/shared/HASH/            tokenizer and token shards, made once, copied / linked into every point
  ROOT/points/NAME/            a normal training workdir (config.json, checkpoints, metrics.jsonl)
  ROOT/points/NAME/result.json the done record, written atomically when the run has finished

A point is done exactly when its result.json exists, so rerunning a sweep skips finished runs and
resumes an interrupted one from its newest checkpoint (train.pretrain does that by itself). A point's
name ends in a hash of its overrides. Before anything runs, every point that has a saved config is
checked against the settings now asked for (model, data and train, logging aside): a difference
is an error naming the setting, never a silent reuse of a run trained otherwise. Settings added
to the config tree since a run was trained are not compared (a new setting's default must keep
the old behaviour), so the sweep survives the config tree growing.

Launchers hand out the pending points: `local` trains them one after another in this process,
`print` prints one shell command per point (for any scheduler), `slurm` writes an sbatch
job-array script. The command of a point is the study's own command line plus --point=NAME, so
collection later reads whatever sub-workdirs exist, however they were run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import shutil
import sys
import time
from typing import Any, Callable, Optional, Sequence

import ml_collections

from train import files  # json and os only: the sweep launcher stays free of jax

LAUNCHERS = ("local", "print", "slurm")
RESULT = "result.json"
# train/studies/sweep.py -> the repository root, where `python -m experiments.X` runs from.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass(frozen=True)
class Point:
  """One run of a sweep: its unique name, the config overrides that make it, and the facts the
  study records with its result (model label, budget, ...)."""

  name: str
  overrides: dict
  meta: dict


def apply_overrides(base: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """A copy of `base` with dotted keys ("model.d_model": 64) set; unknown keys are an error."""
  config = ml_collections.ConfigDict(base.to_dict())
  for dotted, value in overrides.items():
    node = config
    *parents, leaf = dotted.split(".")
    for p in parents:
      if p not in node:
        raise ValueError(f"override {dotted!r}: the config has no section {p!r}")
      node = node[p]
    if leaf not in node:
      raise ValueError(f"override {dotted!r}: the config has no setting {leaf!r}")
    node[leaf] = value
  return config


def make_point(label: str, base: ml_collections.ConfigDict, overrides: dict, meta: dict,
               grows: Sequence[str] = ()) -> Point:
  """A point named `label-<hash of its overrides>`; the overrides must exist in `base`.

  grows: settings left out of the name and of the saved-config check, because the point may be
  asked for more of them later (a WSD stable run's train.steps, extended for a larger budget)."""
  apply_overrides(base, overrides)  # unknown keys fail here, before anything runs
  if grows:
    meta = {**meta, "grows": list(grows)}
  key = json.dumps({k: v for k, v in overrides.items() if k not in grows}, sort_keys=True,
                   default=str)
  return Point(f"{label}-{hashlib.sha1(key.encode()).hexdigest()[:6]}", dict(overrides), dict(meta))


COMPARED = ("model", "data", "train")  # what a run's result depends on
IGNORED = ("train.log_every", "train.eval_every")


def config_conflicts(saved: dict, requested: dict, prefix: str = "",
                     ignored: Sequence[str] = ()) -> list[str]:
  """Settings present in both configs whose values differ, as 'key: saved X, requested Y'
  (IGNORED and `ignored` aside)."""
  out = []
  for key in sorted(set(saved) & set(requested)):
    dotted = prefix + key
    if not prefix and key not in COMPARED or dotted in IGNORED or dotted in ignored:
      continue
    a, b = saved[key], requested[key]
    if isinstance(a, dict) and isinstance(b, dict):
      out += config_conflicts(a, b, dotted + ".", ignored)
    elif a != b and not (isinstance(a, (list, tuple)) and list(a) == list(b)):
      out.append(f"{dotted}: saved {a!r}, requested {b!r}")
  return out


def check_points(root: str, base: ml_collections.ConfigDict, points: Sequence[Point]) -> None:
  """Raises ValueError when a point's workdir holds a run trained with other settings."""
  for p in points:
    path = os.path.join(point_dir(root, p.name), "config.json")
    if not os.path.exists(path):
      continue
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
    conflicts = config_conflicts(saved, json.loads(point_config(base, p).to_json()),
                                 ignored=p.meta.get("grows", ()))
    if conflicts:
      raise ValueError(
          f"{os.path.dirname(path)} was trained with other settings ({'; '.join(conflicts[:3])}); "
          "use a new --workdir for the new settings, or the settings it was trained with")


def model_overrides(n_layers: int, d_model: int, head_dim: int, ffn_mult: int) -> dict:
  """A model sized by depth and width: heads of head_dim (MHA), a feed-forward ffn_mult wide."""
  if d_model % head_dim:
    raise ValueError(f"sweep.models: d_model={d_model} is not a multiple of sweep.head_dim={head_dim}")
  heads = d_model // head_dim
  return {"model.n_layers": n_layers, "model.d_model": d_model, "model.n_heads": heads,
          "model.n_kv_heads": heads, "model.d_ff": ffn_mult * d_model}


def point_config(base: ml_collections.ConfigDict, point: Point) -> ml_collections.ConfigDict:
  return apply_overrides(base, point.overrides)


def point_dir(root: str, name: str) -> str:
  return os.path.join(root, "points", name)


def load_result(root: str, name: str) -> Optional[dict]:
  path = os.path.join(point_dir(root, name), RESULT)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def pending(root: str, points: Sequence[Point]) -> list[Point]:
  return [p for p in points if load_result(root, p.name) is None]


def write_json(path: str, obj: Any) -> None:
  """Atomic: a crash leaves either the old file or the new one, never half of one."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  files.write_json_atomic(path, obj, indent=2, default=str)


def shared_dir(root: str, config: ml_collections.ConfigDict) -> str:
  """ROOT/shared/<hash of the corpus and vocabulary size>: runs on other data get their own."""
  key = json.dumps([config.data.paths, config.data.vocab_size, config.data.get("sources", None) or [],
                    config.data.get("text_field", "text")], default=str)
  return os.path.join(root, "shared", hashlib.sha1(key.encode()).hexdigest()[:8])


def prepare_shared(root: str, config: ml_collections.ConfigDict) -> str:
  """Trains the sweep's tokenizer and tokenizes its corpus once, in shared_dir(root, config).

  Every point then starts from a copy: all runs share one tokenizer (losses in nats per token are
  only comparable under the same tokenizer) and none repeats the tokenization.
  """
  from train.data import pipeline as data_lib

  shared = shared_dir(root, config)
  data_lib.prepare(shared, data_lib.Settings.of(config.data), progress=False)
  return shared


def seed_workdir(shared: str, workdir: str) -> None:
  """Copies the shared tokenizer into a point's workdir and links the token shards beside it
  (each source folder's files, its manifest last, so a half-linked folder never looks complete)."""
  from train.data import shards as shards_lib
  from train.data import tokenizer as tokenizer_lib

  os.makedirs(os.path.join(workdir, "data"), exist_ok=True)
  dst = os.path.join(workdir, tokenizer_lib.FILENAME)
  if not os.path.exists(dst):
    shutil.copyfile(os.path.join(shared, tokenizer_lib.FILENAME), dst + ".tmp")
    os.replace(dst + ".tmp", dst)
  src_data = os.path.join(shared, "data")
  for name in sorted(os.listdir(src_data)) if os.path.isdir(src_data) else []:
    src, target = os.path.join(src_data, name), os.path.join(workdir, "data", name)
    if shards_lib.read_manifest(src) is None or shards_lib.read_manifest(target) is not None:
      continue
    os.makedirs(target, exist_ok=True)
    names = sorted(os.listdir(src), key=lambda n: n == shards_lib.MANIFEST)
    for file in names:
      try:
        os.link(os.path.join(src, file), os.path.join(target, file))
      except FileExistsError:
        pass
      except OSError:  # another filesystem: copy instead
        shutil.copyfile(os.path.join(src, file), os.path.join(target, file))


TrainFn = Callable[[ml_collections.ConfigDict, str], dict]


def run_point(root: str, base: ml_collections.ConfigDict, point: Point,
              train_fn: Optional[TrainFn] = None) -> Optional[dict]:
  """Trains (or resumes) one point and writes its done record. Returns the record, or None when
  the run stopped early (a signal), in which case the sweep should stop too."""
  if train_fn is None:
    from train import pretrain
    train_fn = pretrain.train

  config = point_config(base, point)
  workdir = point_dir(root, point.name)
  seed_workdir(prepare_shared(root, config), workdir)
  wall0, cpu0 = time.perf_counter(), time.process_time()
  summary = train_fn(config, workdir)
  wall_s, cpu_s = time.perf_counter() - wall0, time.process_time() - cpu0
  if summary.get("stopped_by_signal") or summary.get("final_step", 0) < config.train.steps:
    return None
  record = point_record(point, config, summary, wall_s, cpu_s)
  write_json(os.path.join(workdir, RESULT), record)
  return record


def point_record(point: Point, config: ml_collections.ConfigDict, summary: dict, wall_s: float,
                 cpu_s: float) -> dict:
  """A finished point's done record from its training summary and the seconds it took."""
  from model.config import ModelConfig, count_params, flops_per_token

  model_cfg = ModelConfig.from_dict(config.model.to_dict())
  params = count_params(model_cfg)
  tokens = int(summary["final_step"]) * config.train.batch_size * config.data.seq_len
  return {
      "name": point.name,
      "meta": point.meta,
      "overrides": point.overrides,
      "params": params["total"],
      "params_non_embedding": params["non_embedding"],
      "tokens": tokens,
      "steps": int(summary["final_step"]),
      "flops_6nd": 6.0 * params["non_embedding"] * tokens,
      "flops": flops_per_token(model_cfg, config.data.seq_len) * tokens,
      "loss": summary.get("loss"),
      "eval_loss": summary.get("eval_loss"),
      "test_loss": summary.get("test_loss"),  # None unless train.test_batches > 0
      "unigram_entropy": summary.get("unigram_entropy"),
      # Of the attempt that finished the run: a resumed run's earlier attempts are not included.
      "wall_s": wall_s,
      "cpu_s": cpu_s,
      "resumed_from_step": int(summary.get("start_step", 0)),
      "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
  }


# (configs, workdirs) -> each run's summary, as TrainFn's: train/stacked_pretrain.py train_group.
GroupTrainFn = Callable[[Sequence[ml_collections.ConfigDict], Sequence[str]], list]


def stack_key(base: ml_collections.ConfigDict, point: Point) -> Optional[str]:
  """Points with one key may train stacked (train/stacked.py): their configs are equal except in
  train.seed, lr, weight_decay and grad_clip. None: the point trains alone (it branches from
  another run, train.init_from, or may grow, a WSD stable run)."""
  config = point_config(base, point).to_dict()
  if config["train"].get("init_from") or point.meta.get("grows"):
    return None
  config["train"] = {k: v for k, v in config["train"].items() if k not in STACKED_PER_RUN}
  return json.dumps(config, sort_keys=True, default=str)


STACKED_PER_RUN = ("seed", "lr", "weight_decay", "grad_clip")  # train/stacked.py PER_RUN


def stack_groups(base: ml_collections.ConfigDict, points: Sequence[Point],
                 most: int) -> list[list[Point]]:
  """The points in groups of at most `most` that may train stacked (stack_key), in sweep order of
  each group's first point; a point that may not stack is a group of its own."""
  groups: dict[Any, list[list[Point]]] = {}
  order = []
  for i, p in enumerate(points):
    key = stack_key(base, p)
    chunks = groups.setdefault(key if key is not None else ("alone", i), [])
    if not chunks or len(chunks[-1]) >= most:
      chunks.append([])
      order.append(chunks[-1])
    chunks[-1].append(p)
  return order


def run_group(root: str, base: ml_collections.ConfigDict, points: Sequence[Point],
              train_group_fn: Optional[GroupTrainFn] = None) -> Optional[list[dict]]:
  """Trains (or resumes) points that stack_key groups together in one process and one compiled
  step, each in its own workdir, and writes each one's done record as run_point would (its
  wall_s and cpu_s: the group's shared equally, group_wall_s beside). None when stopped early."""
  if train_group_fn is None:
    from train import stacked_pretrain
    train_group_fn = stacked_pretrain.train_group
  configs = [point_config(base, p) for p in points]
  workdirs = [point_dir(root, p.name) for p in points]
  for config, workdir in zip(configs, workdirs):
    seed_workdir(prepare_shared(root, config), workdir)
  wall0, cpu0 = time.perf_counter(), time.process_time()
  summaries = train_group_fn(configs, workdirs)
  wall_s, cpu_s = time.perf_counter() - wall0, time.process_time() - cpu0
  records = []
  for p, config, workdir, summary in zip(points, configs, workdirs, summaries):
    if summary.get("stopped_by_signal") or summary.get("final_step", 0) < config.train.steps:
      continue  # resumes next time; the finished ones are done now
    record = point_record(p, config, summary, wall_s / len(points), cpu_s / len(points))
    record |= {"stacked_with": [q.name for q in points], "group_wall_s": wall_s}
    write_json(os.path.join(workdir, RESULT), record)
    records.append(record)
  return records if len(records) == len(points) else None


def point_command(argv: Sequence[str], name: str, python: str = sys.executable) -> list[str]:
  """The study's own command line (argv[0] is the module's file) with the launcher flags replaced
  by --point=NAME: the same settings, one point."""
  module = os.path.relpath(os.path.abspath(argv[0]), REPO_ROOT)[:-len(".py")].replace(os.sep, ".")
  keep = [a for a in argv[1:] if not a.startswith(("--launcher", "--point"))]
  return [python, "-m", module, *keep, f"--point={name}"]


def print_commands(argv: Sequence[str], points: Sequence[Point], out=None) -> list[str]:
  """One `cd DIR && python -m ... --point=NAME` line per point, on stdout."""
  cwd = shlex.quote(os.getcwd())
  lines = [f"cd {cwd} && {shlex.join(point_command(argv, p.name))}" for p in points]
  for line in lines:
    print(line, file=out or sys.stdout, flush=True)
  return lines


def write_slurm(root: str, argv: Sequence[str], points: Sequence[Point], *, job_name: str,
                options: Sequence[str] = (), max_parallel: int = 0) -> str:
  """Writes ROOT/slurm/sweep.sbatch: a job array with one task per point; returns its path."""
  if not points:
    raise ValueError("no pending points: nothing to submit")
  slurm_dir = os.path.abspath(os.path.join(root, "slurm"))
  os.makedirs(slurm_dir, exist_ok=True)
  limit = f"%{max_parallel}" if max_parallel > 0 else ""
  command = shlex.join(point_command(argv, "NAME")[:-1])
  lines = [
      "#!/bin/bash",
      f"#SBATCH --job-name={job_name}",
      f"#SBATCH --array=0-{len(points) - 1}{limit}",
      f"#SBATCH --output={slurm_dir}/%x-%A_%a.out",
      *[f"#SBATCH {opt}" for opt in options],
      "set -euo pipefail",
      "# One task per pending point; a point already done when its task starts returns at once.",
      "POINTS=(" + " ".join(shlex.quote(p.name) for p in points) + ")",
      f"cd {shlex.quote(os.getcwd())}",
      f'exec {command} --point="${{POINTS[$SLURM_ARRAY_TASK_ID]}}"',
  ]
  path = os.path.join(slurm_dir, "sweep.sbatch")
  files.write_atomic(path, "\n".join(lines) + "\n")
  return path


def find_point(points: Sequence[Point], name: str) -> Point:
  for p in points:
    if p.name == name:
      return p
  raise ValueError(f"--point={name!r} is not in this sweep; its points: {', '.join(p.name for p in points)}")


def collect(root: str, points: Sequence[Point]) -> list[dict]:
  """Done records of this sweep's points, in sweep order, however each was run. Result folders
  of other sweeps (other settings) under ROOT/points are left out."""
  records = []
  for p in points:
    r = load_result(root, p.name)
    if r is not None:
      records.append(r)
  return records


def _log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)  # stdout stays free for the print launcher


def write_jsonl(path: str, rows: Sequence[dict]) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  files.write_jsonl_atomic(path, rows, default=str)


def launch(
    root: str, base: ml_collections.ConfigDict, points: Sequence[Point], *, launcher: str,
    point: str, argv: Sequence[str], job_name: str, slurm_options: Sequence[str] = (),
    on_done: Optional[Callable[[str, Point], None]] = None, train_fn: Optional[TrainFn] = None,
    log: Optional[Callable[[str], None]] = None, stack_runs: int = 0,
    train_group_fn: Optional[GroupTrainFn] = None,
) -> bool:
  """Runs or hands out the sweep; True when every point is done (the study may then report).

  --point=NAME trains that point only (the command the print and slurm launchers hand out).
  on_done(workdir, point), if given, runs after a point is trained (an evaluation, say), where the
  training ran, so a cluster's tasks evaluate their own points.
  stack_runs > 1 (the local launcher only): pending points that differ only in train.seed, lr,
  weight_decay or grad_clip train up to stack_runs at a time in one process and one compiled step
  (run_group); the others alone, as before.
  """
  log = log or _log
  if stack_runs < 0:
    raise ValueError(f"--stack_runs={stack_runs} must be >= 0 (0: every point alone)")
  if stack_runs and (launcher != "local" or point):
    raise ValueError("--stack_runs trains groups in this process: use it with --launcher=local "
                     "and no --point")
  todo = _to_run_here(root, points, launcher, point, "the same settings")
  check_points(root, base, points)
  groups = stack_groups(base, todo, stack_runs) if stack_runs > 1 else [[p] for p in todo]
  for i, group in enumerate(groups):
    names = ", ".join(p.name for p in group)
    log(f"[{i + 1}/{len(groups)} to run, {len(points)} points in the sweep] {names}")
    if len(group) == 1:
      ok = load_result(root, group[0].name) is not None or run_point(
          root, base, group[0], train_fn) is not None
    else:
      ok = run_group(root, base, group, train_group_fn) is not None
    if not ok:
      log(f"stopped during {names}; rerun the same command to resume")
      return False
    for p in group if on_done is not None else ():
      on_done(point_dir(root, p.name), p)
  if point:
    return False  # one task of a sweep: the study reports when collected
  return _hand_out(root, base, points, argv, launcher, job_name, slurm_options, log)


def _hand_out(root: str, base: ml_collections.ConfigDict, points: Sequence[Point],
              argv: Sequence[str], launcher: str, job_name: str, slurm_options: Sequence[str],
              log: Callable[[str], None]) -> bool:
  """The print and slurm launchers' handing out of the pending points; True when none is."""
  todo = pending(root, points)
  if launcher == "print" and todo:
    # At once, without tokenizing: the first task prepares the shared data (every point's
    # run_point does, and reuses it when it is there).
    print_commands(argv, todo)
    if not os.path.exists(shared_dir(root, point_config(base, todo[0]))):
      log("the first of these commands prepares the sweep's shared data; let it start first")
  elif launcher == "slurm" and todo:
    prepare_shared(root, point_config(base, todo[0]))
    path = write_slurm(root, argv, todo, job_name=job_name, options=slurm_options)
    log(f"wrote {path} ({len(todo)} tasks); submit it with: sbatch {path}")
  return not todo


def machine_info() -> dict:
  """Where the numbers were measured, for the results file."""
  import platform

  import jax

  return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
          "cpu_count": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend(),
          "devices": [d.device_kind for d in jax.devices()][:1] + [f"x{jax.device_count()}"]}


def _to_run_here(root: str, points: Sequence[Point], launcher: str, point: str,
                 same: str) -> list[Point]:
  """The points this invocation runs itself (--point=NAME: that one; the local launcher: every
  pending one; print and slurm: none), after checking the launcher and that no two points share
  a name (`same` says what a shared name means); creates ROOT."""
  if launcher not in LAUNCHERS:
    raise ValueError(f"--launcher={launcher!r} is unknown; allowed: {', '.join(LAUNCHERS)}")
  names = [p.name for p in points]
  if len(set(names)) != len(names):
    raise ValueError(f"two points of the study have {same}; remove the duplicate")
  os.makedirs(root, exist_ok=True)
  if point:
    return [find_point(points, point)]
  return pending(root, points) if launcher == "local" else []


def launch_records(
    root: str, points: Sequence[Point], compute: Callable[[Point], dict], *, launcher: str,
    point: str, argv: Sequence[str], job_name: str, slurm_options: Sequence[str] = (),
    log: Optional[Callable[[str], None]] = None,
) -> bool:
  """launch() for points that are a computation, not a training run (experiments.bpe_study,
  attention_scale): compute(point) returns the point's record, written atomically to
  ROOT/points/NAME/result.json, so a point is done exactly as a trained one is and the print and
  slurm launchers, pending() and collect() treat both alike. True when every point is done."""
  log = log or _log
  todo = _to_run_here(root, points, launcher, point, "the same name")
  for i, p in enumerate(todo):
    if load_result(root, p.name) is not None:
      continue
    log(f"[{i + 1}/{len(todo)} to run, {len(points)} in the study] {p.name}")
    start = time.perf_counter()
    record = {"name": p.name, "meta": p.meta, **compute(p)}
    record["wall_s"] = record.get("wall_s", time.perf_counter() - start)
    write_json(os.path.join(point_dir(root, p.name), RESULT), record)
  if point:
    return False
  todo = pending(root, points)
  if launcher == "print" and todo:
    print_commands(argv, todo)
  elif launcher == "slurm" and todo:
    path = write_slurm(root, argv, todo, job_name=job_name, options=slurm_options)
    log(f"wrote {path} ({len(todo)} tasks); submit it with: sbatch {path}")
  return not todo


def define_training_study_flags(config_flag: str, config_file: str, workdir: str,
                                workdir_help: str, point_help: str = "Train only this point "
                                "(the command the launchers hand out).") -> None:
  """The flags every training sweep's script shares: --CONFIG_FLAG (the study's config file),
  --workdir, --launcher, --point and --results_dir (read by launch_training_study)."""
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file(config_flag, config_file, "Study config.")
  flags.DEFINE_string("workdir", workdir, workdir_help)
  flags.DEFINE_enum("launcher", "local", LAUNCHERS, "How pending points are trained.")
  flags.DEFINE_string("point", "", point_help)
  flags.DEFINE_string("results_dir", "", "Where results and plots go; empty = the workdir.")
  flags.DEFINE_integer("stack_runs", 0, "Train up to this many pending points that differ only "
                       "in train.seed, lr, weight_decay or grad_clip together, in one process and "
                       "one compiled step (train/stacked_pretrain.py); 0: every point alone. "
                       "--launcher=local only.")


def launch_training_study(fv: Any, base: ml_collections.ConfigDict, points: Sequence[Point],
                          launch_cfg: ml_collections.ConfigDict, *, unit: str = "points",
                          launched: Optional[Sequence[Point]] = None,
                          on_done: Optional[Callable[[str, Point], None]] = None) -> bool:
  """Trains or hands out the pending points from a study's flag values fv (workdir, launcher,
  point; launched: the subset to hand out now, default all) and says how far the sweep is.
  True when the study should collect and report now: every point done. With points pending
  (the print and slurm launchers hand them out) it returns False at once: no fit of a partial
  sweep stands between the user and the printed commands."""
  launched = points if launched is None else launched
  done = launch(fv.workdir, base, launched, launcher=fv.launcher, point=fv.point, argv=sys.argv,
                job_name=launch_cfg.job_name, slurm_options=tuple(launch_cfg.slurm_options),
                on_done=on_done, stack_runs=getattr(fv, "stack_runs", 0)
                ) and len(launched) == len(points)
  if fv.point:
    return False
  if not done:
    finished = len(points) - len(pending(fv.workdir, points))
    _log(f"{finished} of {len(points)} {unit} done; rerun this command to continue, or to "
         "collect once all are done")
  return done


def define_records_study_flags(name: str, workdir_help: str, out_help: str) -> None:
  """The flags run_records_study reads, for the study NAME: --config (experiments/configs/NAME.py),
  --workdir (runs/NAME), --out (results/NAME), --launcher and --point."""
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", f"experiments/configs/{name}.py", "Study config.")
  flags.DEFINE_string("workdir", f"runs/{name}", workdir_help)
  flags.DEFINE_string("out", f"results/{name}", out_help)
  flags.DEFINE_enum("launcher", "local", LAUNCHERS, "How pending points are computed.")
  flags.DEFINE_string("point", "", "Compute only this point (what the launchers hand out).")


def run_records_study(
    fv: Any, *, make_points: Callable[[ml_collections.ConfigDict], Sequence[Point]],
    compute_point: Callable[[ml_collections.ConfigDict, str, Point], dict],
    report: Callable[[ml_collections.ConfigDict, str, Sequence[Point], str], dict],
) -> Optional[dict]:
  """The main() of a study whose points are computations (experiments.bpe_study,
  attention_scale), from its flag values fv (config, workdir, out, launcher, point): computes or
  hands out the points (launch_records), then, once all are done, writes the report. Returns the
  report's summary, or None when this invocation ran one point or points are still pending; a
  bad setting or file is a one-line error."""
  from train import cli

  cli.setup()
  cfg = fv.config
  try:
    points = make_points(cfg)
    done = launch_records(
        fv.workdir, points, lambda p: compute_point(cfg, fv.workdir, p), launcher=fv.launcher,
        point=fv.point, argv=sys.argv, job_name=cfg.launch.job_name,
        slurm_options=tuple(cfg.launch.slurm_options))
    if fv.point:
      return None
    if not done:
      print("points pending; rerun this command when they are done to collect", file=sys.stderr)
      return None
    return report(cfg, fv.workdir, points, fv.out)
  except (ValueError, FileNotFoundError) as e:
    cli.fail(e)
