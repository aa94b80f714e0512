"""ModelConfig and experiment-config validation: each impossible setting names its field."""

import glob
import importlib
import json
import os

import ml_collections
import pytest
from absl import flags

from model.config import ModelConfig, count_params
from train import config as config_lib
from tests.helpers import ROOT, tiny_config


@pytest.mark.parametrize("field, value, needle", [
    ("d_model", 30, "model.d_model=30 must be divisible by model.n_heads=4"),
    ("n_kv_heads", 3, "model.n_heads=4 must be divisible by model.n_kv_heads=3"),
    ("n_layers", 0, "model.n_layers must be a positive integer"),
    ("vocab_size", -5, "model.vocab_size must be a positive integer"),
    ("attention_impl", "magic", "model.attention_impl='magic' is unknown; allowed: reference"),
    ("dtype", "float8", "model.dtype='float8' is unknown; allowed: auto, float32, bfloat16"),
    ("dtype", "float16", "model.dtype=float16 needs loss scaling"),
    ("param_dtype", "int8", "model.param_dtype='int8' is unknown"),
    ("remat", "sometimes", "model.remat='sometimes' is unknown"),
    ("sliding_window", -1, "model.sliding_window must be >= 0"),
    ("global_every", 2, "model.global_every mixes local and global layers: set model.sliding_window"),
    ("kv_lora_rank", 16, "model.qk_rope_head_dim=0 must be even, positive"),
    ("qk_rope_head_dim", 4, "model.qk_rope_head_dim needs latent attention"),
    ("rope_scaling", {"kind": "ntk"}, "model.rope_scaling.kind='ntk' is unknown"),
    ("rope_scaling", {"kind": "llama3", "factor": 8.0}, "original_max_seq_len=0 must be the positive"),
    ("d_head", 7, "the head width 7"),
])
def test_model_config_rejects_impossible_values(field, value, needle):
  kwargs = dict(d_model=32, n_heads=4, n_kv_heads=2)
  kwargs[field] = value
  with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
    ModelConfig(**kwargs)


def test_model_config_rejects_unknown_keys():
  with pytest.raises(ValueError, match=r"unknown model setting\(s\) \['n_expertz'\]"):
    ModelConfig.from_dict({"n_expertz": 3})


@pytest.mark.parametrize("kv, name", [(4, "MHA"), (2, "GQA"), (1, "MQA")])
def test_attention_variants_are_valid_configs(kv, name):
  cfg = ModelConfig(d_model=32, n_heads=4, n_kv_heads=kv)
  assert cfg.head_dim == 8, name


def test_kv_heads_shrink_parameter_count():
  mha = count_params(ModelConfig(d_model=64, n_heads=8, n_kv_heads=8))["total"]
  mqa = count_params(ModelConfig(d_model=64, n_heads=8, n_kv_heads=1))["total"]
  # wk and wv each shrink from d x d to d x d_head, in every layer.
  assert mha - mqa == 4 * 2 * (64 * 64 - 64 * 8)


@pytest.mark.parametrize("dotted, value, needle", [
    ("train.steps", 0, "train.steps must be positive"),
    ("train.batch_size", 6, "train.batch_size=6 must be divisible by train.grad_accum=4"),
    ("data.seq_len", 100, "data.seq_len=100 exceeds model.max_seq_len=64"),
    ("checkpoint.keep", 0, "checkpoint.keep must be positive"),
    ("train.schedule", "linear", r"train.schedule='linear' is unknown; allowed: cosine, wsd, constant"),
    ("train.decay_shape", "sqrt", r"train.decay_shape='sqrt' is unknown; allowed: linear, 1-sqrt"),
    ("train.decay_fraction", 0.0, r"train.decay_fraction must be in \(0, 1\], got 0.0"),
    ("train.z_loss", -1e-4, "train.z_loss must be a number >= 0"),
    ("train.init_from", "runs/stable", "train.init_from='runs/stable' must be PATH:STEP"),
])
def test_experiment_config_errors_name_the_setting(dotted, value, needle):
  c = tiny_config("", **{"train.grad_accum": 4 if dotted == "train.batch_size" else 1})
  if dotted == "data.seq_len":  # unlink model.max_seq_len from data.seq_len, as a user may
    c.model = ml_collections.ConfigDict(c.model.to_dict())
    c.model.max_seq_len = 64
  node, leaf = c, dotted.split(".")
  for p in leaf[:-1]:
    node = node[p]
  node[leaf[-1]] = value
  with pytest.raises(ValueError, match=needle):
    config_lib.validate(c)


def test_wsd_decay_must_fit_after_the_warmup():
  """Catches: a WSD decay that overlaps the warmup accepted (the schedule would silently shorten
  it), or the decay's length rounded differently from the schedule's (20% of 6 steps: 1)."""
  c = tiny_config("", **{"train.schedule": "wsd", "train.steps": 6, "train.warmup_steps": 5,
                         "train.decay_fraction": 0.2})
  assert config_lib.resolve(c).train.decay_start == 5
  c.train.decay_fraction = 0.3  # 2 decay steps + 5 warmup > 6
  with pytest.raises(config_lib.ConfigError, match=r"^train.decay_fraction=0.3 decays over 2 "
                     r"steps, which with train.warmup_steps=5 exceeds train.steps=6$"):
    config_lib.resolve(c)


def test_workdir_with_other_model_shape_is_refused(tmp_path):
  c = tiny_config("")
  config_lib.save(str(tmp_path), c)
  c2 = tiny_config("", **{"model.d_model": 64})
  with pytest.raises(config_lib.ConfigError, match="model.d_model: saved 32, requested 64"):
    config_lib.check_workdir(str(tmp_path), c2)
  c3 = tiny_config("", **{"train.steps": 100})  # a longer run of the same model is fine
  config_lib.check_workdir(str(tmp_path), c3)
  # A workdir saved before a model field existed resumes while the field is at its default, and
  # is refused once the field differs (catches a comparison of the raw saved dicts).
  saved = json.loads((tmp_path / "config.json").read_text())
  del saved["model"]["sliding_window"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  config_lib.check_workdir(str(tmp_path), c)
  with pytest.raises(config_lib.ConfigError, match="model.sliding_window: saved 0, requested 8"):
    config_lib.check_workdir(str(tmp_path), tiny_config("", **{"model.sliding_window": 8}))


def test_every_experiment_script_imports_beside_the_others():
  # Tests and scripts import functions from experiment scripts; a flag defined at import time
  # would make the second script that defines it (say --workdir) fail with DuplicateFlagError.
  paths = glob.glob(os.path.join(ROOT, "experiments", "*.py"))
  scripts = sorted(os.path.basename(p)[:-3] for p in paths)
  for name in scripts:
    importlib.import_module(f"experiments.{name}")
  assert "workdir" not in flags.FLAGS  # no script defined its flags on import


def _parse(*args: str) -> flags.FlagValues:
  """train.cli's define + parse_flags over a script's usual flags, in process."""
  from ml_collections import config_flags

  from train import cli

  fv = flags.FlagValues()
  argv = ["prog", *args]

  def define_flags():
    config_flags.DEFINE_config_file(
        "config", os.path.join(ROOT, "experiments", "configs", "tiny.py"), "", flag_values=fv)
    flags.DEFINE_string("workdir", None, "", flag_values=fv)
    cli.define_profile_steps_flag(fv)

  cli.define(define_flags, argv)
  cli.parse_flags(argv, fv)
  return fv


@pytest.mark.parametrize("args, line", [
    (("--config.train.stepz=3",),
     "unknown setting config.train.stepz (did you mean config.train.steps?)"),
    (("--config.trian.steps=3",),
     "unknown setting config.trian.steps (did you mean config.train.steps?)"),
    ((f"--config={ROOT}/experiments/configs/tiny.py", "--config.train.steps=abc"),
     "config.train.steps=abc: expected an int"),
    (("--config.train.lr=fast",), "config.train.lr=fast: expected a float"),
    (("--workdirr=x",), "unknown flag --workdirr (did you mean --workdir?)"),
    (("--config=/no/such.py",), "--config=/no/such.py: no such config file"),
    # ml_collections applies the override to the config it failed to load: a 98-line traceback.
    (("--config=/no/such.py", "--config.train.steps=3"),
     "--config=/no/such.py: no such config file"),
    (("--profile_steps=5:2",), "flag --profile_steps=5:2: expected A:B with 1 <= A <= B"),
    (("--profile_steps=abc",), "flag --profile_steps=abc: expected A:B, two step numbers"),
])
def test_command_line_errors_are_one_line_naming_the_setting(args, line):
  """Catches: an unknown --config key, a mistyped value or a misspelt flag raising inside
  absl / ml_collections parsing (a traceback, a message without the dotted key or suggestion),
  including a typo in an override of the default config, which fails while flags are defined."""
  from train import cli

  with pytest.raises(cli.UsageError) as e:
    _parse(*args)
  assert str(e.value) == line


def test_overrides_of_the_default_config_still_apply():
  """Catches: the error handling hiding overrides from a config flag left at its default."""
  fv = _parse("--config.train.steps=3", "--workdir=w")
  assert fv.config.train.steps == 3 and fv.workdir == "w"


def test_a_mixture_is_given_on_the_command_line_as_a_tuple_literal():
  """docs/data.md's command line: data.sources is a tuple, so ml_collections parses a Python
  literal for it (a list field could not be overridden at all), and validate checks weights."""
  fv = _parse('--config.data.sources=({"paths": "a/*.txt", "weight": 0.7}, {"paths": "b.jsonl"})')
  assert fv.config.data.sources == ({"paths": "a/*.txt", "weight": 0.7}, {"paths": "b.jsonl"})
  config_lib.validate(fv.config)
  fv.config.data.sources = ({"paths": "a/*.txt", "weight": -1},)
  with pytest.raises(config_lib.ConfigError, match=r"^data.sources\[0\].weight=-1 must be a positive"):
    config_lib.validate(fv.config)
  # 1e999 on a command line is inf, which passes `> 0` and broke the mixture after the shards and
  # config.json were written (OverflowError); two huge weights overflow their sum.
  fv.config.data.sources = ({"paths": "a/*.txt", "weight": float("inf")}, {"paths": "b.jsonl"})
  with pytest.raises(config_lib.ConfigError, match=r"^data.sources\[0\].weight=inf must be a positive, finite"):
    config_lib.validate(fv.config)
  fv.config.data.sources = ({"paths": "a/*.txt", "weight": 1e308}, {"paths": "b", "weight": 1e308})
  with pytest.raises(config_lib.ConfigError, match=r"weights sum to inf"):
    config_lib.validate(fv.config)


@pytest.mark.parametrize("dotted, value, needle", [
    ("train.stepz", 3, r"unknown train setting\(s\) \['stepz'\]; allowed: \["),
    ("checkpoint.every", 3, r"unknown checkpoint setting\(s\) \['every'\]"),
    ("sharding.zero", 1, r"unknown sharding setting\(s\) \['zero'\]"),
    ("data.seq_length", 8, r"unknown data setting\(s\) \['seq_length'\]"),
])
def test_an_unknown_key_of_a_section_is_one_line_naming_the_section(dotted, value, needle):
  """Catches: a misspelt setting of a config file silently ignored (a default used instead)."""
  c = tiny_config("")
  section, leaf = dotted.split(".")
  c[section][leaf] = value
  with pytest.raises(ValueError, match=needle):
    config_lib.resolve(c)


def test_settings_are_typed_once_with_the_defaults_of_missing_keys():
  """Catches: a section left out of the typed settings, or a default that differs from the one
  the loops used to fill in (grad_accum 1, zero_stage 0, no memory check, no restart)."""
  c = tiny_config("")
  del c.train.grad_accum
  del c.checkpoint.restart_if_unreadable
  c.sharding = ml_collections.ConfigDict({"mesh": {"data": 1}})
  s = config_lib.resolve(c)
  assert (s.train.grad_accum, s.sharding.zero_stage, s.sharding.device_memory_gb) == (1, 0, 0.0)
  assert s.checkpoint.restart_if_unreadable is False
  assert s.data.seq_len == c.data.seq_len and s.model.max_seq_len == c.model.max_seq_len
  assert s.sharding.mesh == {"data": 1}


def test_device_memory_gb_must_be_a_number():
  from sharding import mesh as mesh_lib

  c = tiny_config("", **{"sharding.device_memory_gb": -1.0})
  with pytest.raises(mesh_lib.MeshError, match="sharding.device_memory_gb=-1.0 must be a number"):
    config_lib.resolve(c)


@pytest.mark.parametrize("stage, dotted, value, needle", [
    ("dpo", "dpo.loss_type", "x", "dpo.loss_type='x' is unknown; allowed: sigmoid"),
    ("grpo", "grpo.epsilon_high", 0.1, "grpo.epsilon_high >= grpo.epsilon"),
    ("sft", "eval.batch_size", 0, "eval.batch_size must be positive"),
    ("sft", "task.ops", "+/", "task.ops='\\+/' must be a non-empty string"),
    ("dpo", "dpo.betaa", 1.0, r"unknown dpo setting\(s\) \['betaa'\]"),
    ("grpo", "data.train_pth", "x", r"unknown data setting\(s\) \['train_pth'\]"),
])
def test_alignment_stage_errors_name_the_setting(stage, dotted, value, needle):
  """Catches: a stage's section left out of resolve_stage (its bad value or misspelt key then
  reaches the run unchecked, or is silently replaced by a default)."""
  c = importlib.import_module(f"experiments.configs.{stage}").get_config()
  section, leaf = dotted.split(".")
  c[section][leaf] = value
  with pytest.raises(ValueError, match=needle):
    config_lib.resolve_stage(c, stage)


@pytest.mark.parametrize("stage", ["sft", "dpo", "grpo"])
def test_a_stage_config_resolves_to_its_values(stage):
  """Catches: resolve_stage reading a section from the wrong place (the stage's own section or
  the shared train.*), or the settings differing from what the config file says."""
  import dataclasses

  c = importlib.import_module(f"experiments.configs.{stage}").get_config()
  s = config_lib.resolve_stage(c, stage)
  assert dataclasses.asdict(s.stage) == c[stage].to_dict()
  assert (dataclasses.asdict(s.task), dataclasses.asdict(s.eval)) == (c.task.to_dict(), c.eval.to_dict())
  assert (s.train.steps, s.train.lr, s.checkpoint.keep) == (c.train.steps, c.train.lr, c.checkpoint.keep)


def test_a_section_holds_every_field_at_its_default_and_refuses_unknown_overrides():
  """Catches: section() dropping fields (a command-line override of them would be refused) or
  adding a key that is not a field (a typo in a config file)."""
  s = config_lib.section(config_lib.TrainSettings, steps=7)
  assert s.steps == 7 and s.lr == config_lib.TrainSettings().lr and "answer_marker" in s
  assert "eot_token" not in config_lib.section(config_lib.DataSettings)  # None: filled in later
  with pytest.raises(KeyError, match='Did you mean "steps"'):
    config_lib.section(config_lib.TrainSettings, stepz=7)


def test_an_os_error_reaching_a_script_is_one_line_with_path_errno_and_fix(capsys):
  """Catches: a full disk or a read-only folder meeting a script's main as a traceback (the
  OSError escaping cli.run), or a line without the path, the errno or what to do."""
  import errno

  from train import cli

  def main(argv):
    raise OSError(errno.ENOSPC, "No space left on device", "/runs/a/config.json")

  with pytest.raises(SystemExit) as e:
    cli._one_line_os_errors(main)(["prog"])
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.count("\n") == 1
  assert err.startswith("error: /runs/a/config.json: No space left on device [errno 28 ENOSPC]; "
                        "free space there")
  line = cli.os_error_line(PermissionError(errno.EACCES, "Permission denied", "/ro/w"))
  assert line.startswith("/ro/w: Permission denied [errno 13 EACCES]; make it writable")


@pytest.mark.parametrize("value, needle", [("", "empty"), ("A_FILE", "is a file")])
def test_workdir_that_is_empty_or_a_file_is_refused_at_parse_time(tmp_path, value, needle):
  """Catches: --workdir= or --workdir=FILE reaching the run (os.makedirs' 'File exists' or 'No
  such file or directory' from deep inside the lock, or worse, a run in the current folder)."""
  from train import cli

  if value == "A_FILE":
    value = str(tmp_path / "f")
    open(value, "w").close()
  with pytest.raises(flags.ValidationError, match=needle):
    cli._workdir_usable(value)
  assert cli._workdir_usable(str(tmp_path / "new")) and cli._workdir_usable(None)
