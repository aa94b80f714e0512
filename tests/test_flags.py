"""The daily loop's command line: --help lists a script's flags, --print_config shows the resolved
config with each field's origin, --dry_run checks a run and prints its banner without training."""

from __future__ import annotations

import os
import re

import pytest

from tests.helpers import run_script, train_args


def _listed(help_text: str, flag: str) -> bool:
  """Whether --help lists `flag` as a flag entry (`  --workdir: ...`), not only in the usage."""
  return re.search(rf"^\s+--(\[no\])?{flag}:", help_text, re.MULTILINE) is not None


@pytest.mark.parametrize("script", ["experiments.sft", "experiments.train"])
def test_help_lists_the_scripts_own_and_shared_flags(script):
  """Catches: flags defined from train/ modules (the alignment scripts' define_stage_flags,
  cli's --profile and --profile_steps) listed only under --helpfull, because absl's --help shows
  the main module's key flags alone."""
  done = run_script(script, "--help", timeout=120)
  for flag in ("workdir", "config", "profile", "profile_steps", "print_config", "results_dir",
               "compilation_cache"):
    assert _listed(done.stdout, flag), (flag, done.stdout[-3000:], done.stderr[-2000:])
  assert not _listed(done.stdout, r"config\.train\.steps")  # a config's fields: --print_config


def test_compilation_cache_points_jax_at_the_flags_directory_unless_the_environment_does(
    monkeypatch, tmp_path):
  """Catches: --compilation_cache parsed but never given to JAX, '' not turning it off, and the
  flag overriding a JAX_COMPILATION_CACHE_DIR the user (or this suite) set."""
  import jax

  from train import cli

  options = {}  # what the function asks of JAX; the suite's own cache is left alone
  monkeypatch.setattr(jax.config, "update", lambda name, value: options.__setitem__(name, value))
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  cli.use_compilation_cache("")
  assert options == {}
  cli.use_compilation_cache(str(tmp_path / "xla"))
  assert options == {"jax_compilation_cache_dir": str(tmp_path / "xla"),
                     "jax_compilation_cache_max_size": cli.COMPILATION_CACHE_MAX_BYTES}
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
  cli.use_compilation_cache(str(tmp_path / "other"))
  assert options["jax_compilation_cache_dir"] == str(tmp_path / "xla")  # untouched


def _config_line(text: str, key: str) -> str:
  lines = [line for line in text.splitlines() if line.split(" ", 1)[0] == key]
  assert len(lines) == 1, (key, text[-3000:])
  return lines[0]


def test_print_config_shows_each_fields_value_and_origin_and_needs_no_workdir():
  """Catches: an override printed as the file's value or origin, a field the file left alone
  shown as the file's (or one it changed as a default), and --print_config refused for want of
  the --workdir it never reads."""
  done = run_script("experiments.train", "--print_config", "--config=experiments/configs/tiny.py",
                    "--config.train.steps=7", timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert re.fullmatch(r"train\.steps\s+= 7\s+\[flag\]", _config_line(done.stdout, "train.steps"))
  assert re.fullmatch(r"train\.weight_decay\s+= 0\.1\s+\[default\]",
                      _config_line(done.stdout, "train.weight_decay"))
  assert re.fullmatch(r"data\.seq_len\s+= 32\s+\[config file\]",  # tiny.py's; the default is 256
                      _config_line(done.stdout, "data.seq_len"))
  assert "train:" not in done.stderr  # no progress bar: nothing trained


def test_config_tree_origins_of_an_alignment_config():
  """Catches: an alignment config compared with pretraining's sections (its sft.* and task.*
  would all read as the config file's), and an override of a whole dict not marking the fields
  under it."""
  from experiments.configs import sft
  from train import config_tree

  origins = {key: origin for key, _, origin in config_tree.leaves(
      sft.get_config(), ["train.lr", "sharding.mesh"])}
  assert origins["train.lr"] == "flag"
  assert origins["train.steps"] == "config file"  # sft.py: 2000, TrainSettings: 400
  assert origins["train.weight_decay"] == "config file"  # alignment.py: 0.0, TrainSettings: 0.1
  assert origins["train.grad_clip"] == "default"
  assert origins["sft.stop_accuracy"] == "default"
  assert origins["task.digits"] == "default"
  assert origins["model.max_seq_len"] == "config file"
  assert origins["model.n_layers"] == "default"
  assert {o for k, o in origins.items() if k.startswith("sharding.mesh.")} == {"flag"}


def test_dry_run_prints_the_banner_and_writes_nothing(tmp_path, tiny_corpus):
  """Catches: a dry run that prepares data, saves config.json or a checkpoint, or trains; and a
  banner that names the mesh as configured ({data: -1}) instead of resolved."""
  workdir = tmp_path / "run"
  done = run_script("experiments.train", *train_args(workdir, tiny_corpus), "--dry_run",
                    timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert re.search(r"^\s+mesh\s+data=1 fsdp=1 tensor=1 expert=1 ", done.stdout, re.MULTILINE), \
      done.stdout
  assert re.search(r"^\s+start\s+starting fresh$", done.stdout, re.MULTILINE), done.stdout
  assert re.search(r"^\s+data\s+data\.paths: .*\(7 files\)", done.stdout, re.MULTILINE), done.stdout
  assert not os.path.exists(workdir / "checkpoints")
  assert not os.path.exists(workdir)  # no tokenizer, shards, config.json or lock either


def test_dry_run_banner_of_an_8_device_zero3_run_names_its_mesh_and_preflight(tmp_path, tiny_corpus):
  """Catches: a banner that reads the same on 8 devices at ZeRO-3 as on 1 (the device count, the
  resolved mesh, the stage), and a memory pre-flight that passes without saying so."""
  done = run_script(
      "experiments.train", *train_args(
          tmp_path / "run", tiny_corpus, "--config.sharding.zero_stage=3",
          "--config.sharding.mesh.fsdp=2", "--config.sharding.device_memory_gb=80"),
      "--dry_run", n_devices=8, timeout=240)
  assert done.returncode == 0, done.stderr[-2000:]
  out = done.stdout
  assert re.search(r"^\s+devices\s+8 x cpu", out, re.MULTILINE), out
  assert re.search(r"^\s+mesh\s+data=4 fsdp=2 tensor=1 expert=1 ", out, re.MULTILINE), out
  assert re.search(r"^\s+zero\s+stage 3: .* 8 data-parallel devices$", out, re.MULTILINE), out
  assert re.search(r"^\s+memory\s+pre-flight passed: .* at sharding\.zero_stage=3, within "
                   r"sharding\.device_memory_gb=80$", out, re.MULTILINE), out
  assert not os.path.exists(tmp_path / "run")


def test_a_script_finds_its_default_config_from_another_directory(tmp_path):
  """Catches: the default --config (a path relative to the repository) read from the working
  directory, which from anywhere else is a 30-line traceback or a missing-file error."""
  import subprocess

  from tests.helpers import script_cmd, script_env

  done = subprocess.run(
      script_cmd("experiments.sft", "--print_config", "--config.train.steps=7"), cwd=tmp_path,
      env=script_env(), capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert re.search(r"^train\.steps\s+= 7\s+\[flag\]$", done.stdout, re.MULTILINE), done.stdout
  assert re.search(r"^sft\.stop_accuracy\s+= ", done.stdout, re.MULTILINE), done.stdout
