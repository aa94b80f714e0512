"""The cases of the fault suite (train/studies/faults.py has the harness) and the suite's run.

Each case is a function Suite -> record: {"expected", "passed", "rc", "last_stderr_line",
"traceback", "seconds", "lost": {...}}. "reference" runs first: the uninterrupted run whose
losses every resumed run is compared with, whose workdir damaged copies start from, and whose
export the --from_hf cases truncate.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import tempfile
import time
import zlib
from typing import Any, Callable, Optional

from train import files as files_lib
from train import provenance as provenance_lib
from train.studies.faults import (
    EXACT, TINY, Outcome, Suite, checkpoint_steps, drop_file_permission_override,
    file_size_limit, in_progress_saves, leftovers, logged_losses, loss_gap, tree_digest,
    write_corpus)


def record(expected: str, outcome: Outcome, passed: bool, **lost: Any) -> dict:
  return {"expected": expected, "passed": bool(passed), "rc": outcome.rc,
          "last_stderr_line": outcome.last_line[:500], "traceback": outcome.traceback,
          "seconds": round(outcome.seconds, 1), "lost": lost}


def _rerun(s: Suite, workdir: str) -> tuple[Outcome, dict]:
  """Reruns the same command on workdir (a resume); what it started from and how its losses
  compare with the reference."""
  before = checkpoint_steps(workdir)
  o = s.run(s.train_args(workdir))
  return o, {"checkpoints_before_rerun": before, "rerun_rc": o.rc,
             "rerun_start_step": o.summary.get("start_step"),
             "rerun_final_step": o.summary.get("final_step"),
             "rerun_traceback": o.traceback, "loss_gap_vs_reference": loss_gap(s, workdir),
             "leftovers_after_rerun": leftovers(workdir)}


def _resumed_exactly(s: Suite, info: dict, start: int) -> bool:
  return (info["rerun_rc"] == 0 and info["rerun_start_step"] == start
          and info["rerun_final_step"] == s.steps and info["loss_gap_vs_reference"] <= EXACT
          and not info["rerun_traceback"] and not info["leftovers_after_rerun"])


def _newest_logged(workdir: str) -> int:
  return max(logged_losses(workdir), default=0)


def reference(s: Suite) -> dict:
  wd = s.path("reference")
  o = s.run(s.train_args(wd))
  s.reference, s.reference_workdir = logged_losses(wd), wd
  saves = list(range(s.every_steps, s.steps + 1, s.every_steps))
  return record("an uninterrupted run: exit 0, every step logged, a checkpoint every "
                "checkpoint.every_steps", o,
                o.rc == 0 and sorted(s.reference) == list(range(1, s.steps + 1))
                and checkpoint_steps(wd) == saves, checkpoints=checkpoint_steps(wd))


def kill9_random_step(s: Suite) -> dict:
  wd, step = s.path("kill9"), s.rng.randint(1, s.steps - 1)
  r = s.start(s.train_args(wd), "kill9")
  reached = r.wait_until(lambda: _newest_logged(wd) >= step, s.timeout_s)
  r.finish(60, signal.SIGKILL)
  logged, saved = _newest_logged(wd), max(checkpoint_steps(wd), default=0)
  o, info = _rerun(s, wd)
  return record(f"kill -9 after step {step}: the rerun resumes from the newest checkpoint and "
                "its losses equal the reference's", o,
                reached and _resumed_exactly(s, info, saved),
                killed_after_step=logged, steps_lost=logged - saved, **info)


def kill9_mid_save(s: Suite) -> dict:
  wd = s.path("kill9_save")
  r = s.start(s.train_args(wd), "kill9_save")
  during = r.wait_until(lambda: bool(in_progress_saves(wd)), s.timeout_s, poll_s=0.005)
  partial = in_progress_saves(wd)
  r.finish(60, signal.SIGKILL)
  logged, saved = _newest_logged(wd), max(checkpoint_steps(wd), default=0)
  o, info = _rerun(s, wd)
  return record("kill -9 while a checkpoint is being written: the half-written one is never "
                "restored, the rerun resumes from the one before, losses equal", o,
                during and _resumed_exactly(s, info, saved), killed_during_save=during,
                unfinished_saves_at_kill=partial, killed_after_step=logged,
                steps_lost=logged - saved, **info)


def sigterm_then_resume(s: Suite) -> dict:
  wd, step = s.path("sigterm"), s.rng.randint(1, s.steps - 2)
  r = s.start(s.train_args(wd), "sigterm")
  reached = r.wait_until(lambda: _newest_logged(wd) >= step, s.timeout_s)
  first = r.finish(120, signal.SIGTERM)
  logged, saved = _newest_logged(wd), max(checkpoint_steps(wd), default=0)
  o, info = _rerun(s, wd)
  clean_stop = first.rc == 0 and "stopped_by_signal" in first.summary and saved == logged
  return record("SIGTERM: the run saves the step it finished and exits 0; the rerun resumes "
                "there, nothing lost, losses equal", o,
                reached and clean_stop and _resumed_exactly(s, info, saved),
                sigterm_rc=first.rc, sigterm_last_line=first.last_line, stopped_at=logged,
                steps_lost=logged - saved, **info)


def _copy_reference(s: Suite, name: str) -> str:
  wd = s.path(name)
  shutil.copytree(s.reference_workdir, wd)
  return wd


def damaged_newest_checkpoint(s: Suite) -> dict:
  wd = _copy_reference(s, "damaged")
  newest = max(checkpoint_steps(wd))
  folder = os.path.join(wd, "checkpoints", str(newest))
  sizes = {p: size for p, size in tree_digest(folder).items()}
  victim = os.path.join(folder, max(sizes, key=sizes.get))
  os.truncate(victim, sizes[max(sizes, key=sizes.get)] // 2)
  o, info = _rerun(s, wd)
  start = newest - s.every_steps
  return record("the newest checkpoint truncated: the rerun names it, moves it aside and resumes "
                "from the one before; losses equal", o,
                _resumed_exactly(s, info, start) and "unreadable" in o.stdout + o.stderr,
                damaged=os.path.relpath(victim, wd), steps_lost=newest - start,
                warning=next((x for x in o.stdout.splitlines() if "unreadable" in x), ""), **info)


def disk_full_during_save(s: Suite, limit: int = 100_000) -> dict:
  wd = s.path("disk_full_save")
  r = s.start(s.train_args(wd), "disk_full_save")
  first_saved = r.wait_until(lambda: bool(checkpoint_steps(wd)), s.timeout_s)
  if r.proc.poll() is None:  # the disk fills now: no file may grow past `limit` bytes
    resource.prlimit(r.proc.pid, resource.RLIMIT_FSIZE, (limit, limit))
  full = r.finish(180)
  kept = checkpoint_steps(wd)
  o, info = _rerun(s, wd)
  return record(f"RLIMIT_FSIZE={limit} set after the first checkpoint: the next save fails in "
                "one line, earlier checkpoints intact, the rerun resumes exactly", full,
                first_saved and full.one_line_error() and bool(kept)
                and _resumed_exactly(s, info, max(kept, default=0)),
                checkpoints_kept=kept, leftovers_after_failure=leftovers(wd), **info)


def two_runs_one_workdir(s: Suite) -> dict:
  wd = s.path("two_runs")
  first = s.start(s.train_args(wd), "two_runs")
  locked = first.wait_until(lambda: os.path.exists(os.path.join(wd, ".lock")), s.timeout_s)
  second = s.run(s.train_args(wd))
  done = first.finish(s.timeout_s)
  return record("a second run on a live run's workdir stops in one line naming the holder; the "
                "first finishes untouched (losses equal the reference)", second,
                locked and second.one_line_error() and "in use by pid" in second.last_line
                and done.rc == 0 and loss_gap(s, wd) <= EXACT,
                first_rc=done.rc, first_loss_gap=loss_gap(s, wd))


def _train_shard(workdir: str) -> tuple[str, dict, dict]:
  """(path of the first training shard, its manifest entry, the manifest) of the workdir's data."""
  data = os.path.join(workdir, "data")
  folder = next(os.path.join(data, d) for d in sorted(os.listdir(data)) if d.startswith("src-"))
  with open(os.path.join(folder, "manifest.json"), encoding="utf-8") as f:
    manifest = json.load(f)
  entry = manifest["splits"]["train"]["shards"][0]
  return os.path.join(folder, entry["file"]), entry, manifest


def _flip_byte(path: str, offset: int) -> None:
  with open(path, "r+b") as f:
    f.seek(offset)
    b = f.read(1)
    f.seek(offset)
    f.write(bytes([b[0] ^ 0x01]))


def corrupt_shard_byte(s: Suite) -> dict:
  wd = _copy_reference(s, "corrupt_shard")
  shard, _, _ = _train_shard(wd)
  _flip_byte(shard, os.path.getsize(shard) - 7)
  before = checkpoint_steps(wd)
  o = s.run(s.train_args(wd))
  return record("one byte of a shard flipped: one line naming the shard (checksum), nothing "
                "trained on it", o,
                o.one_line_error() and os.path.basename(shard) in o.last_line
                and checkpoint_steps(wd) == before, shard=os.path.relpath(shard, wd))


def shard_id_out_of_range(s: Suite) -> dict:
  wd = _copy_reference(s, "shard_ids")
  shard, entry, manifest = _train_shard(wd)
  with open(shard, "r+b") as f:  # a uint16 id far past the vocabulary, checksum made to agree
    f.seek(os.path.getsize(shard) - 8)
    f.write((65535).to_bytes(2, "little"))
  with open(shard, "rb") as f:
    entry["crc32"] = f"{zlib.crc32(f.read()):08x}"
  files_lib.write_json_atomic(os.path.join(os.path.dirname(shard), "manifest.json"), manifest,
                              indent=2)
  o = s.run(s.train_args(wd))
  return record("a token id past the vocabulary in a shard whose checksum agrees: one line "
                "naming the shard and the id", o,
                o.one_line_error() and "outside the vocabulary" in o.last_line,
                shard=os.path.relpath(shard, wd))


def changed_source_file(s: Suite) -> dict:
  wd, corpus = s.path("changed_source"), s.path("changed_source.jsonl")
  shutil.copyfile(s.corpus, corpus)
  prepared = s.run(["-m", "experiments.prepare_data", f"--config={TINY}",
                    f"--config.data.paths={corpus}", f"--workdir={wd}"])
  with open(corpus, "a", encoding="utf-8") as f:
    f.write(json.dumps({"text": "a document added after the shards were made"}) + "\n")
  o = s.run(s.train_args(wd, corpus=corpus))
  return record("a source file edited after its shards were prepared: one line naming it", o,
                prepared.rc == 0 and o.one_line_error() and "changed since" in o.last_line,
                prepare_rc=prepared.rc)


def export_to_hf(s: Suite) -> dict:
  hf = s.path("hf")
  o = s.run(["-m", "experiments.convert", f"--workdir={s.reference_workdir}", f"--to_hf={hf}"])
  ok = o.rc == 0 and os.path.exists(os.path.join(hf, "model.safetensors"))
  s.hf_dir = hf if ok else ""
  return record("convert --to_hf of the reference run into a new directory: exit 0", o, ok)


def to_hf_into_workdir(s: Suite) -> dict:
  target = _copy_reference(s, "export_target")
  before = tree_digest(target)
  o = s.run(["-m", "experiments.convert", f"--workdir={s.reference_workdir}",
             f"--to_hf={target}"])
  return record("convert --to_hf into another run's workdir: refused in one line, nothing in it "
                "changed", o,
                o.one_line_error() and "workdir" in o.last_line and tree_digest(target) == before)


def _from_damaged_hf(s: Suite, name: str, keep: Callable[[int], int]) -> dict:
  src = s.path(name)
  if s.hf_dir:
    shutil.copytree(s.hf_dir, src)
    weights = os.path.join(src, "model.safetensors")
    os.truncate(weights, keep(os.path.getsize(weights)))
  wd = s.path(name + "_workdir")
  o = s.run(["-m", "experiments.convert", f"--from_hf={src}", f"--workdir={wd}"])
  return record(f"convert --from_hf of a directory whose model.safetensors is {name}: one line "
                "naming the file, no workdir written", o,
                bool(s.hf_dir) and o.one_line_error() and "model.safetensors" in o.last_line
                and not os.path.exists(wd))


def from_hf_truncated(s: Suite) -> dict:
  return _from_damaged_hf(s, "truncated", lambda size: size // 2)


def from_hf_empty(s: Suite) -> dict:
  return _from_damaged_hf(s, "empty", lambda size: 0)


def readonly_workdir(s: Suite) -> dict:
  ro = s.path("readonly")
  os.makedirs(ro)
  os.chmod(ro, 0o555)
  inside = s.run(s.train_args(os.path.join(ro, "run")), preexec=drop_file_permission_override)
  itself = s.run(s.train_args(ro), preexec=drop_file_permission_override)
  written = os.listdir(ro)
  os.chmod(ro, 0o755)
  return record("a read-only folder (chmod 555) as --workdir or its parent: one line each, "
                "nothing written", itself,
                inside.one_line_error() and itself.one_line_error() and not written,
                inside_last_line=inside.last_line, written=written)


def disk_full_at_start(s: Suite, limit: int = 3000) -> dict:
  wd = s.path("disk_full_start")
  o = s.run(s.train_args(wd), preexec=file_size_limit(limit))
  left = leftovers(wd) if os.path.isdir(wd) else []
  return record(f"RLIMIT_FSIZE={limit} from the start (the tokenizer does not fit): one line "
                "with the path and errno, no .tmp file left", o,
                o.one_line_error() and "EFBIG" in o.last_line and not left, leftovers=left)


def disk_full_writing_config(s: Suite, limit: int = 1000) -> dict:
  wd = _copy_reference(s, "disk_full_config")
  path = os.path.join(wd, "config.json")
  with open(path, "rb") as f:
    before = f.read()
  o = s.run(s.train_args(wd), preexec=file_size_limit(limit))
  with open(path, "rb") as f:
    kept = f.read() == before
  left = leftovers(wd)
  return record(f"RLIMIT_FSIZE={limit} on a resume, failing at config.json: one line naming it, "
                "the old config.json intact, no config.json.tmp", o,
                o.one_line_error() and "config.json" in o.last_line and kept and not left,
                config_json_intact=kept, leftovers=left)


def disk_full_preparing_data(s: Suite, limit: int = 20_000) -> dict:
  wd = s.path("disk_full_data")
  full = s.run(s.train_args(wd), preexec=file_size_limit(limit))
  left = leftovers(wd) if os.path.isdir(wd) else []
  o, info = _rerun(s, wd)
  return record(f"RLIMIT_FSIZE={limit} while the shards are written: one line, no half-written "
                "shard folder or .tmp left, and the rerun (no limit) prepares them again and "
                "trains to the reference's losses", full,
                full.one_line_error() and not left and _resumed_exactly(s, info, 0),
                leftovers_after_failure=left, **info)


def workdir_is_a_file(s: Suite) -> dict:
  path = s.path("a_file")
  with open(path, "w", encoding="utf-8") as f:
    f.write("not a workdir\n")
  o = s.run(s.train_args(path))
  with open(path, encoding="utf-8") as f:
    same = f.read() == "not a workdir\n"
  return record("--workdir naming a regular file: one line, the file untouched", o,
                o.one_line_error() and "file" in o.last_line and same)


def workdir_empty(s: Suite) -> dict:
  o = s.run(s.train_args(""))
  return record("--workdir= (empty): one line", o, o.one_line_error() and "empty" in o.last_line)


def missing_config_with_override(s: Suite) -> dict:
  wd = s.path("missing_config")
  o = s.run(["-m", "experiments.train", "--config=experiments/configs/no_such_file.py",
             "--config.train.steps=3", f"--workdir={wd}"])
  return record("a config file that does not exist, with a --config.X override: one line naming "
                "the file", o,
                o.one_line_error() and "no such config file" in o.last_line
                and len(o.stderr.strip().splitlines()) == 1 and not os.path.exists(wd))


def infinite_mixture_weight(s: Suite) -> dict:
  wd, other = s.path("inf_weight"), s.path("inf_weight_other.jsonl")
  write_corpus(other, seed=1)
  sources = (f'({{"paths": "{s.corpus}", "weight": 1e999}}, '
             f'{{"paths": "{other}", "weight": 1.0}})')
  o = s.run(s.train_args(wd, f"--config.data.sources={sources}"))
  return record("data.sources weight 1e999: one line naming the setting, before anything is "
                "written", o,
                o.one_line_error() and "data.sources[0].weight" in o.last_line
                and not os.path.exists(wd))


def bracket_in_corpus_path(s: Suite) -> dict:
  folder = s.path("brackets")
  os.makedirs(folder)
  literal, lookalike = os.path.join(folder, "c[1].jsonl"), os.path.join(folder, "c1.jsonl")
  shutil.copyfile(s.corpus, literal)
  write_corpus(lookalike, seed=2)  # what the glob c[1].jsonl matches
  wd = s.path("brackets_workdir")
  o = s.run(["-m", "experiments.prepare_data", f"--config={TINY}",
             f"--config.data.paths={literal}", f"--workdir={wd}"])
  manifests = [os.path.join(dp, "manifest.json") for dp, _, fs in os.walk(wd)
               if "manifest.json" in fs]
  read = []
  for m in manifests:
    with open(m, encoding="utf-8") as f:
      read += [r["path"] for r in json.load(f).get("files", [])]
  return record("a corpus path containing [ that exists: read as that file, not as a glob "
                "(which would match a look-alike)", o, o.rc == 0 and read == [literal],
                files_read=read)


CASES: dict[str, Callable[[Suite], dict]] = {
    "reference": reference,
    "kill9_random_step": kill9_random_step,
    "kill9_mid_save": kill9_mid_save,
    "sigterm_then_resume": sigterm_then_resume,
    "damaged_newest_checkpoint": damaged_newest_checkpoint,
    "disk_full_during_save": disk_full_during_save,
    "two_runs_one_workdir": two_runs_one_workdir,
    "corrupt_shard_byte": corrupt_shard_byte,
    "shard_id_out_of_range": shard_id_out_of_range,
    "changed_source_file": changed_source_file,
    "export_to_hf": export_to_hf,
    "to_hf_into_workdir": to_hf_into_workdir,
    "from_hf_truncated": from_hf_truncated,
    "from_hf_empty": from_hf_empty,
    "readonly_workdir": readonly_workdir,
    "disk_full_at_start": disk_full_at_start,
    "disk_full_writing_config": disk_full_writing_config,
    "disk_full_preparing_data": disk_full_preparing_data,
    "workdir_is_a_file": workdir_is_a_file,
    "workdir_empty": workdir_empty,
    "missing_config_with_override": missing_config_with_override,
    "infinite_mixture_weight": infinite_mixture_weight,
    "bracket_in_corpus_path": bracket_in_corpus_path,
}


def run_case(s: Suite, name: str) -> dict:
  """One case; an exception inside the suite itself is recorded as a failed case, not raised."""
  t0 = time.perf_counter()
  try:
    out = CASES[name](s)
  except Exception as e:  # noqa: BLE001 - the suite reports every case, whatever happens
    out = {"expected": CASES[name].__name__, "passed": False, "rc": None,
           "last_stderr_line": "", "traceback": False, "lost": {},
           "suite_error": f"{type(e).__name__}: {e}"}
  out["case_seconds"] = round(time.perf_counter() - t0, 1)
  return out


def run_suite(names: list[str], out_dir: str, *, steps: int = 8, seed: int = 0,
              keep: bool = False, log: Optional[Callable[[str], None]] = None) -> dict:
  """Runs the named cases ("reference" first, always) in a temporary root; writes and returns
  out_dir/results.json: per case its record, the counts, the settings and the provenance."""
  log = log or (lambda line: print(line, flush=True))
  root = tempfile.mkdtemp(prefix="llmlab-faults-")
  s = Suite(root=root, steps=steps)
  s.rng.seed(seed)
  s.corpus = s.path("corpus.jsonl")
  write_corpus(s.corpus)
  cases: dict[str, dict] = {}
  try:
    for name in ["reference"] + [n for n in names if n != "reference"]:
      cases[name] = run_case(s, name)
      c = cases[name]
      log(f"{'PASS' if c['passed'] else 'FAIL'} {name} ({c['case_seconds']} s): "
          f"{c['last_stderr_line'][:160]}")
  finally:
    if not keep:
      shutil.rmtree(root, ignore_errors=True)
  settings = {"steps": steps, "every_steps": s.every_steps, "seed": seed, "config": TINY,
              "cases": list(cases)}
  results = {"passed": sum(c["passed"] for c in cases.values()),
             "failed": sorted(n for n, c in cases.items() if not c["passed"]),
             "total": len(cases), "settings": settings, "cases": cases,
             "provenance": provenance_lib.provenance(settings)}
  os.makedirs(out_dir, exist_ok=True)
  files_lib.write_json_atomic(os.path.join(out_dir, "results.json"), results, indent=2)
  return results
