"""The experiment config: its typed sections, defined once, and the one place a ConfigDict becomes them.

Config files and the command line are ml_collections ConfigDicts. A pretraining config has the
sections model.* (ModelConfig, model/config.py), data.*, train.*, checkpoint.* and sharding.* (the
frozen dataclasses below); an alignment stage's (SFT, DPO, GRPO, train/align/) has task.*, data.*
(StageDataSettings), train.*, eval.*, checkpoint.*, sharding.* and its own section (sft.*, dpo.* or
grpo.*). A config file builds each section with section(cls, **what differs), so a field's default
is written once, here, with the reason for it; resolve() (pretraining) and resolve_stage()
(alignment) check a config once and return its typed sections, so every run reads typed fields,
never `section.get(name, default)`. A field's default is also what a config that leaves it out, or
the config.json of a workdir saved before the field existed, gets.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Optional

from model import fields
from model.config import ModelConfig
from sharding import mesh as mesh_lib
from train import files

if TYPE_CHECKING:  # only section() needs it at run time: the benchmarks run without it
  import ml_collections


class ConfigError(ValueError):
  """A setting that cannot work; the message names it."""


def section(cls: type, **overrides) -> ml_collections.ConfigDict:
  """The config section of the dataclass cls: every field at its default, then `overrides` (which
  may be FieldReferences, e.g. the model following data.*; a name that is not a field is an error).

  A field whose default is None is left out: ml_collections cannot set a None field from the
  command line, and the dataclass fills it in."""
  import ml_collections

  defaults = {k: v for k, v in dataclasses.asdict(cls()).items() if v is not None}
  out = ml_collections.ConfigDict(defaults)  # a nested dataclass (model.moe): a nested section
  out.lock()  # an override that is not a field is an error, not a new key
  for name, value in overrides.items():
    out[name] = value
  out.unlock()
  return out


def require_positive(section: Any, prefix: str, *names: str) -> None:
  """ConfigError naming the first of `names` (fields of the dataclass `section`, whose config
  section is `prefix`) that is not > 0."""
  for name in names:
    value = getattr(section, name)
    if not value > 0:
      raise ConfigError(f"{prefix}.{name} must be positive, got {value!r}")


def _as_dict(section: Any) -> dict:
  """A ConfigDict (FieldReferences resolved) or a mapping as a plain dict."""
  return section.to_dict() if hasattr(section, "to_dict") else dict(section)


def _known(cls: type, d: Mapping[str, Any]) -> dict:
  names = {f.name for f in dataclasses.fields(cls)}
  return {k: v for k, v in d.items() if k in names}


def _from_section(cls: type, section: Any, name: str, strict: bool) -> Any:
  """cls from a config section; strict=False drops keys that are not fields (a saved
  config.json, written by a version with other settings, is a record, not a user's typo)."""
  d = _as_dict(section)
  return fields.from_dict(cls, d if strict else _known(cls, d), name)


SCHEDULES = ("cosine", "wsd", "constant")
LOGGERS = ("tensorboard", "jsonl", "wandb")
DECAY_SHAPES = ("linear", "1-sqrt", "cosine")


def wsd_decay_steps(decay_fraction: float, total_steps: int) -> int:
  """The steps of a WSD schedule's final decay: decay_fraction of total_steps rounded half up,
  at least 1."""
  return max(1, int(decay_fraction * total_steps + 0.5))


def task_name(path: str) -> str:
  """A task file's name in its metrics (task/NAME/accuracy): the file name less .jsonl."""
  base = os.path.basename(path)
  return base[:-len(".jsonl")] if base.endswith(".jsonl") else base


def parse_init_from(init_from: str) -> tuple[str, int]:
  """train.init_from "PATH:STEP" as (PATH, STEP); ConfigError in one line otherwise."""
  path, sep, step = str(init_from).rpartition(":")
  if not sep or not path or not step.isdigit():
    raise ConfigError(
        f"train.init_from={init_from!r} must be PATH:STEP (a run's workdir and one of its "
        "checkpoint steps), or \"\" to start from scratch")
  return path, int(step)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  """train.*: pretraining and the alignment stages share the section (an alignment config has no
  eval_batches: its evaluation is exact match, so the default stays unused there)."""

  steps: int = 400
  batch_size: int = 16
  lr: float = 3e-3
  warmup_steps: int = 50
  weight_decay: float = 0.1
  grad_clip: float = 1.0
  grad_accum: int = 1  # micro-batches per step; the update equals the whole batch's
  seed: int = 0
  log_every: int = 10
  eval_every: int = 80
  eval_batches: int = 8
  # Batches of a test split scored once, at the last step, as summary["test_loss"]: the
  # validation rows are then halved, the first half for eval_loss (which studies choose
  # settings by), the second for test_loss (which they report). 0 = no test split.
  test_batches: int = 0
  # Pretraining only: where set (a text that is one token, e.g. " ?"), the loss counts only the
  # answers of questions "MARKER KEY" -> VALUE, the target one after the token that follows each
  # marker (train/step.py answer_targets); "" = every token.
  answer_marker: str = ""
  # The learning-rate schedule after the linear warmup (train/optimizer.py schedule_for):
  # "cosine" to lr / 10 at train.steps; "wsd" (warmup-stable-decay, Hagele et al. 2024) holds lr
  # and decays to 0 over the last decay_fraction of train.steps in the shape decay_shape;
  # "constant" holds lr (a stable run to branch cooldowns from, train.init_from).
  schedule: str = "cosine"
  decay_fraction: float = 0.2
  decay_shape: str = "1-sqrt"
  # PaLM's z-loss: z_loss * mean(logsumexp(logits)^2) over the counted tokens, added to the LM
  # loss (train/step.py); 0 = off, PaLM used 1e-4.
  z_loss: float = 0.0
  # "PATH:STEP": a new workdir starts from run PATH's checkpoint at STEP (parameters, optimizer
  # state, data position; train/branch.py); "" = from scratch. Ignored once the workdir has
  # checkpoints of its own.
  init_from: str = ""
  # Where metrics go, any of LOGGERS (train/metrics.py): metrics.jsonl, TensorBoard, and
  # Weights & Biases (the `wandb` extra; offline unless WANDB_MODE or an API key says otherwise).
  loggers: tuple = ("tensorboard", "jsonl")
  # Pretraining only: task files (train/eval_tasks.py, docs/evaluation.md) scored on the live
  # model at every evaluation step and logged as task/NAME/... (NAME: the file's name less
  # .jsonl); a tuple of paths, or one string of comma-separated paths from the command line;
  # () = none. The files are read and checked at start-up, before anything compiles.
  eval_tasks: tuple = ()
  # The first this-many items of each task file are scored at each evaluation (its cost).
  eval_tasks_max_items: int = 64

  def __post_init__(self):
    self._check_loggers()
    self._check_eval_tasks()
    require_positive(self, "train", "steps", "batch_size", "lr", "grad_clip", "grad_accum",
                     "log_every", "eval_every", "eval_batches", "eval_tasks_max_items")
    if self.warmup_steps < 0 or self.weight_decay < 0 or self.test_batches < 0:
      raise ConfigError("train.warmup_steps, train.weight_decay and train.test_batches must be >= 0")
    self._check_schedule()
    if isinstance(self.z_loss, bool) or not isinstance(self.z_loss, (int, float)) or self.z_loss < 0:
      raise ConfigError(f"train.z_loss must be a number >= 0 (0 = off, PaLM: 1e-4), got {self.z_loss!r}")
    if self.init_from:
      parse_init_from(self.init_from)

  def _check_loggers(self) -> None:
    loggers = self.loggers
    if isinstance(loggers, str):  # "jsonl,wandb" from a command line
      loggers = [name.strip() for name in loggers.split(",") if name.strip()]
    loggers = tuple(dict.fromkeys(loggers))  # in order, each once
    unknown = [name for name in loggers if name not in LOGGERS]
    if unknown:
      raise ConfigError(f"train.loggers has unknown {unknown[0]!r}; allowed: {', '.join(LOGGERS)}")
    object.__setattr__(self, "loggers", loggers)

  def _check_eval_tasks(self) -> None:
    """eval_tasks as a tuple of paths, each task name once: every entry split at commas (the
    command line's --config.train.eval_tasks=a.jsonl,b.jsonl arrives as the 1-tuple
    ("a.jsonl,b.jsonl",)). Whether the files exist is checked where a run starts
    (eval_tasks.read_tasks), so a saved config.json whose task files have moved still loads."""
    entries = (self.eval_tasks,) if isinstance(self.eval_tasks, str) else self.eval_tasks
    if not isinstance(entries, (tuple, list)) or not all(isinstance(e, str) for e in entries):
      raise ConfigError(f"train.eval_tasks must be task file paths, got {self.eval_tasks!r}")
    paths = [p.strip() for e in entries for p in e.split(",") if p.strip()]
    names = [task_name(p) for p in paths]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
      raise ConfigError(f"train.eval_tasks names two files {twice[0]!r}; the metrics "
                        f"task/{twice[0]}/... need one file per name")
    object.__setattr__(self, "eval_tasks", tuple(paths))

  def _check_schedule(self) -> None:
    if self.schedule not in SCHEDULES:
      raise ConfigError(f"train.schedule={self.schedule!r} is unknown; allowed: {', '.join(SCHEDULES)}")
    if self.decay_shape not in DECAY_SHAPES:
      raise ConfigError(
          f"train.decay_shape={self.decay_shape!r} is unknown; allowed: {', '.join(DECAY_SHAPES)}")
    if isinstance(self.decay_fraction, bool) or not 0 < self.decay_fraction <= 1:
      raise ConfigError(f"train.decay_fraction must be in (0, 1], got {self.decay_fraction!r}")
    if self.schedule == "wsd" and self.warmup_steps + self.decay_steps > self.steps:
      raise ConfigError(
          f"train.decay_fraction={self.decay_fraction} decays over {self.decay_steps} steps, which "
          f"with train.warmup_steps={self.warmup_steps} exceeds train.steps={self.steps}")

  @property
  def decay_steps(self) -> int:
    """WSD: the steps of the final decay over train.steps (wsd_decay_steps)."""
    return wsd_decay_steps(self.decay_fraction, self.steps)

  @property
  def decay_start(self) -> int:
    """WSD: the first step whose learning rate is below lr (the step a cooldown branch starts
    from, train.init_from=PATH:decay_start)."""
    return self.steps - self.decay_steps

  @classmethod
  def from_config(cls, section: Any, *, strict: bool = True) -> "TrainSettings":
    return _from_section(cls, section, "train", strict)


@dataclasses.dataclass(frozen=True)
class CheckpointSettings:
  """checkpoint.*: how often to save, how many to keep, whether saves are written in the
  background, and whether a run whose checkpoints are all unreadable starts over (False: it
  stops with an error)."""

  every_steps: int = 80
  keep: int = 3
  restart_if_unreadable: bool = False
  # Steps also saved, and never rotated out by `keep`: a WSD stable run keeps the checkpoint each
  # cooldown branches from (train.init_from=PATH:STEP).
  keep_steps: tuple = ()
  # Write checkpoints in a background thread while training goes on (the step that saves waits
  # only for the copy off the devices; results/checkpoint_overhead has the cost of each). False:
  # a save is on disk when the step that made it ends.
  async_save: bool = True
  # Also save a temporary checkpoint (checkpoints/temp/, only the newest kept) whenever this many
  # minutes have passed since the last save, so a preempted run with a long every_steps loses at
  # most that much; 0 = off.
  every_minutes: float = 0.0

  def __post_init__(self):
    require_positive(self, "checkpoint", "every_steps", "keep")
    minutes = self.every_minutes
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not minutes >= 0:
      raise ConfigError(f"checkpoint.every_minutes={minutes!r} must be minutes >= 0 (0 = no "
                        "time-based checkpoints)")
    steps = tuple(self.keep_steps or ())
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in steps):
      raise ConfigError(f"checkpoint.keep_steps={steps!r} must be step numbers >= 1")
    object.__setattr__(self, "keep_steps", tuple(sorted(set(steps))))

  def must_save(self, step: int) -> bool:
    """Whether the loop saves at `step` (besides the last step and a signal)."""
    return step % self.every_steps == 0 or step in self.keep_steps

  @classmethod
  def from_config(cls, section: Any, *, strict: bool = True) -> "CheckpointSettings":
    return _from_section(cls, section, "checkpoint", strict)


@dataclasses.dataclass(frozen=True)
class ShardingSettings:
  """sharding.*: the mesh's axis sizes, the ZeRO stage, and the memory per device in GB that the
  compiled step is checked against before the first step (0 = no check)."""

  # Axis sizes of the device mesh (data, fsdp, tensor, expert); one -1 takes the remaining devices.
  mesh: dict = dataclasses.field(default_factory=lambda: {"data": -1})
  # ZeRO over the data-parallel devices: 0 replicated, 1 optimizer state partitioned, 2 gradients
  # too, 3 parameters too (FSDP). Any stage resumes any other's checkpoint.
  zero_stage: int = 0
  # Memory per device in GB (an H100: 80). Before the first step the compiled step's peak is
  # checked against it, and a run that does not fit stops naming the lowest ZeRO stage that would.
  device_memory_gb: float = 0.0

  def __post_init__(self):
    object.__setattr__(self, "mesh", _as_dict(self.mesh))
    budget = self.device_memory_gb
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget < 0:
      raise mesh_lib.MeshError(
          f"sharding.device_memory_gb={budget!r} must be a number of GB per device (0 = no check)")

  @classmethod
  def from_config(cls, section: Any, *, strict: bool = True) -> "ShardingSettings":
    return _from_section(cls, section, "sharding", strict)


def check_sources(sources: Any) -> None:
  """data.sources: a list of {"paths": globs, "weight": > 0}; the files are checked later, by
  train/data.check_sources (still before anything compiles)."""
  if isinstance(sources, (str, dict)) or not hasattr(sources, "__len__"):
    raise ConfigError(f"data.sources must be a list of {{'paths': ..., 'weight': ...}}, got {sources!r}")
  for i, s in enumerate(sources):
    if not hasattr(s, "get") or not s.get("paths"):
      raise ConfigError(f"data.sources[{i}] must be a dict with non-empty 'paths', got {s!r}")
    extra = sorted(set(s.keys()) - {"paths", "weight"})
    if extra:
      raise ConfigError(f"data.sources[{i}] has unknown keys {extra}; a source has 'paths' and 'weight'")
    w = s.get("weight", 1.0)  # a source's own record: weight 1 unless it says otherwise
    # inf (1e999 on a command line) passes `w > 0` but breaks the mixture's normalisation.
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w < math.inf:
      raise ConfigError(f"data.sources[{i}].weight={w!r} must be a positive, finite number")
  total = sum(float(s.get("weight", 1.0)) for s in sources)
  if not math.isfinite(total):
    raise ConfigError(f"data.sources' weights sum to {total}; scale them down (only their ratios "
                      "matter)")


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """data.*: the text, where its shards live, and the shape of a row (train/data/pipeline.py reads it)."""

  # Comma-separated files or globs (.txt, .jsonl, .jsonl.gz, .parquet), or a list; "" = the
  # standard library's Python source; "stdlib:tiny" = ~400 kB of it (train/data/documents.py
  # STDLIB_TINY_FILES), the tiny config's corpus.
  paths: Any = ""
  # A mixture instead of data.paths: a tuple of {"paths": globs, "weight": > 0}, each source
  # sampled in proportion to its weight; () = data.paths alone. Set it in a config file, or on the
  # command line as a Python literal (docs/data.md):
  #   --config.data.sources='({"paths": "a/*.jsonl", "weight": 0.7}, {"paths": "b/*.txt", "weight": 0.3})'
  sources: tuple = ()
  text_field: str = "text"  # the field of a .jsonl line, the column of a .parquet file
  # Where the token shards go (experiments.prepare_data, or the first training run, writes them);
  # "" = <workdir>/data. A folder on a shared filesystem serves every run and every host.
  prepared: str = ""
  vocab_size: int = 2048
  seq_len: int = 256
  # A workdir imported by experiments.convert records its tokenizer's special tokens here (the
  # ones playing end-of-text, padding and start of text; None: none added). The tokenizer's own
  # roles file is what is read; these keep its config.json a valid config to train on.
  eot_token: Optional[str] = None
  pad_token: Optional[str] = None
  bos_token: Optional[str] = None
  # Resume a workdir that trained on other data (paths, sources or text_field changed) on this
  # data: its shards are made again and its validation rows change with it. Without it such a
  # resume is refused (train/pretrain.py resolve_settings, data_diffs).
  allow_change: bool = False

  def __post_init__(self):
    # None from a command line or an old config.json means the default.
    object.__setattr__(self, "sources", tuple(self.sources or ()))
    object.__setattr__(self, "text_field", self.text_field or "text")
    object.__setattr__(self, "prepared", self.prepared or "")
    require_positive(self, "data", "seq_len", "vocab_size")
    check_sources(self.sources)

  @classmethod
  def from_config(cls, section: Any, *, strict: bool = True) -> "DataSettings":
    return _from_section(cls, section, "data", strict)

  @staticmethod
  def of(data_cfg: Any) -> "DataSettings":
    """From a data section that may hold settings of its own beside these (a study's)."""
    return DataSettings.from_config(data_cfg, strict=False)


@dataclasses.dataclass(frozen=True)
class DistillSettings:
  """distill.*: logit distillation of a speculative draft (train/kl_distill.py). Off at
  kl_weight 0. On, each step's objective is lm_weight x cross-entropy + kl_weight x T^2 x
  KL(target || draft) at temperature T over the target's top_k tokens (0: the whole vocabulary),
  the target's distribution computed by its frozen forward pass over the batch."""

  target_workdir: str = ""  # the trained target run (same tokenizer as this run)
  kl_weight: float = 0.0
  lm_weight: float = 1.0  # 0: the KL alone
  temperature: float = 1.0  # the sampling temperature the draft is meant for
  top_k: int = 32

  def __post_init__(self):
    for name in ("kl_weight", "lm_weight", "temperature"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigError(f"distill.{name}={value!r} must be a number >= 0")
    if not self.temperature > 0:
      raise ConfigError(f"distill.temperature={self.temperature!r} must be > 0")
    if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
      raise ConfigError(f"distill.top_k={self.top_k!r} must be an integer >= 0 (0: the whole "
                        "vocabulary)")
    if self.kl_weight == 0 and self.lm_weight == 0:
      raise ConfigError("distill.lm_weight=0 and distill.kl_weight=0 leave nothing to train; "
                        "raise one")
    if self.kl_weight > 0 and not self.target_workdir:
      raise ConfigError("distill.kl_weight > 0 needs distill.target_workdir, the target run")

  @property
  def enabled(self) -> bool:
    return self.kl_weight > 0

  @classmethod
  def from_config(cls, section: Any, *, strict: bool = True) -> "DistillSettings":
    return _from_section(cls, section, "distill", strict)


@dataclasses.dataclass(frozen=True)
class RunSettings:
  """A pretraining run's validated sections, built once by resolve()."""

  model: ModelConfig
  data: DataSettings
  train: TrainSettings
  checkpoint: CheckpointSettings
  sharding: ShardingSettings
  distill: DistillSettings = DistillSettings()


def resolve(config: ml_collections.ConfigDict) -> RunSettings:
  """Checks every setting once; returns the run's typed sections. Raises ConfigError or
  ValueError (MeshError for sharding.*) in one line naming the setting."""
  for name in ("model", "data", "train", "checkpoint"):
    if name not in config:
      raise ConfigError(f"config has no section {name!r}")
  model_cfg = ModelConfig.from_dict(config.model.to_dict())
  train_settings = TrainSettings.from_config(config.train)
  if train_settings.batch_size % train_settings.grad_accum:
    raise ConfigError(
        f"train.batch_size={train_settings.batch_size} must be divisible by "
        f"train.grad_accum={train_settings.grad_accum}")
  data_settings = DataSettings.from_config(config.data)
  if data_settings.seq_len > model_cfg.max_seq_len:
    raise ConfigError(
        f"data.seq_len={data_settings.seq_len} exceeds "
        f"model.max_seq_len={model_cfg.max_seq_len}; "
        "lower one or raise the other")
  if data_settings.vocab_size > model_cfg.vocab_size:
    raise ConfigError(
        f"data.vocab_size={data_settings.vocab_size} exceeds "
        f"model.vocab_size={model_cfg.vocab_size}")
  checkpoint_settings = CheckpointSettings.from_config(config.checkpoint)
  # A config without a sharding section runs on every device, replicated (the defaults).
  sharding_settings = ShardingSettings.from_config(
      config.sharding if "sharding" in config else {})
  # A config without a distill section trains on the cross-entropy alone.
  distill_settings = DistillSettings.from_config(config.distill if "distill" in config else {})
  if distill_settings.top_k > model_cfg.vocab_size:
    raise ConfigError(f"distill.top_k={distill_settings.top_k} exceeds "
                      f"model.vocab_size={model_cfg.vocab_size}")
  return RunSettings(model=model_cfg, data=data_settings, train=train_settings,
                     checkpoint=checkpoint_settings, sharding=sharding_settings,
                     distill=distill_settings)


def validate(config: ml_collections.ConfigDict) -> ModelConfig:
  """Checks every setting (see resolve); returns the ModelConfig."""
  return resolve(config).model


# ---------------------------------------------------------------------------------------------
# The alignment stages (train/align/): SFT, DPO and GRPO share train.*, checkpoint.* and
# sharding.* with pretraining, and add task.*, data.* (their own), eval.* and the stage's section.


@dataclasses.dataclass(frozen=True)
class TaskSettings:
  """task.*: the built-in task, integer arithmetic with exact answers, seeded, split into train and
  held-out problems by train/data/arithmetic.py. Every stage of a chain must use the same task."""

  digits: int = 2  # both operands have exactly this many digits
  ops: str = "+-"  # any of "+-*"; subtraction answers are non-negative
  n_train: int = 4000
  # Held-out problems are halved by a hash of the prompt (train/data/arithmetic.py heldout_part):
  # n_validation of one half are what a run's choices read (SFT's early stop, the eval/accuracy
  # curve settings are picked from), n_heldout of the other are the test set a run reports.
  n_heldout: int = 500
  n_validation: int = 500
  heldout_fraction: float = 0.2  # share of all problems held out, by a hash of the prompt
  # " 1 2 + 3 5 =": a space before every character, so that a BPE tokenizer (a pretrained
  # init_workdir) cannot merge digits. A fresh model's byte-level tokenizer has one token per
  # digit anyway, and unspaced text is half as long.
  spaced_digits: bool = False
  seed: int = 0

  def __post_init__(self):
    if not (self.digits > 0 and self.n_train > 0 and self.n_heldout > 0 and self.n_validation > 0):
      raise ConfigError(
          "task.digits, task.n_train, task.n_heldout and task.n_validation must be positive")
    bad = sorted(set(self.ops) - set("+-*"))
    if not self.ops or bad:
      raise ConfigError(f"task.ops={self.ops!r} must be a non-empty string of '+', '-', '*'")
    if not 0.0 < self.heldout_fraction < 1.0:
      raise ConfigError(f"task.heldout_fraction must be in (0, 1), got {self.heldout_fraction!r}")


@dataclasses.dataclass(frozen=True)
class StageDataSettings:
  """data.* of an alignment stage: the user's JSONL files instead of the task (train/align/data.py
  reads them); "" = the task."""

  train_path: str = ""
  # {"prompt", "answer"} per line: the test set, held-out exact match as reported. Without
  # validation_path its rows are halved by a hash of the prompt, one half for validation.
  eval_path: str = ""
  validation_path: str = ""  # {"prompt", "answer"} per line: what a run's choices read


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """eval.*: held-out exact match with greedy decoding (train/align/stage.py make_evaluator), on
  at most max_examples prompts of each held-out set (validation and test), batch_size at a time,
  answers up to max_new_tokens."""

  max_examples: int = 500
  batch_size: int = 250
  max_new_tokens: int = 8

  def __post_init__(self):
    require_positive(self, "eval", "batch_size", "max_new_tokens", "max_examples")


@dataclasses.dataclass(frozen=True)
class SftSettings:
  """sft.*: supervised fine-tuning (train/align/sft.py)."""

  # Stop at the first evaluation with at least this validation accuracy: the chain wants a policy
  # that solves some problems but not all, so that DPO and GRPO have something left to learn
  # (GRPO's groups need per-prompt success rates strictly between 0 and 1). 1 = never stop early.
  stop_accuracy: float = 0.5

  def __post_init__(self):
    if not 0.0 < self.stop_accuracy <= 1.0:
      raise ConfigError(
          f"sft.stop_accuracy must be in (0, 1] (1 = never stop early), got {self.stop_accuracy!r}")


@dataclasses.dataclass(frozen=True)
class DpoSettings:
  """dpo.*: direct preference optimisation (train/align/dpo.py)."""

  LOSS_TYPES: ClassVar[tuple[str, ...]] = ("sigmoid", "ipo", "hinge", "robust")
  REJECTED: ClassVar[tuple[str, ...]] = ("near_miss", "policy")

  loss_type: str = "sigmoid"  # sigmoid | ipo | hinge | robust
  beta: float = 0.1  # the paper's typical value
  label_smoothing: float = 0.0  # robust only: the assumed rate of flipped preference labels
  # Where the rejected answers come from: "near_miss" = the right number moved by 1, 2 or 10^k
  # (the task's pairs, or a {"prompt", "chosen", "rejected"} file as given); "policy" = a wrong
  # answer sampled from the starting policy itself (prompts from the task or a
  # {"prompt", "answer"} file), up to policy_tries samples per prompt.
  rejected: str = "near_miss"
  policy_tries: int = 4
  # 0.2 x the chosen answers' per-token NLL next to the DPO loss (RPO, Pang et al. 2024). In a
  # calibration run (lr 1e-4, these pairs) plain DPO lowered the chosen log-probs together with
  # the rejected ones and held-out accuracy fell from 54.5% to 40%; with 0.2 it rose to 61%
  # (docs/alignment.md). The weight stays small so that the preference term still leads.
  # 0 = plain DPO.
  nll_weight: float = 0.2
  # Reference log-probs computed once over the training pairs and stored in the workdir, so the
  # reference model is not held in memory nor run at every step; False keeps a live reference.
  precompute_ref: bool = True

  def __post_init__(self):
    if self.loss_type not in self.LOSS_TYPES:
      raise ConfigError(
          f"dpo.loss_type={self.loss_type!r} is unknown; allowed: {', '.join(self.LOSS_TYPES)}")
    if not self.beta > 0:
      raise ConfigError(f"dpo.beta must be positive, got {self.beta!r}")
    if self.rejected not in self.REJECTED:
      raise ConfigError(
          f"dpo.rejected={self.rejected!r} is unknown; allowed: {', '.join(self.REJECTED)}")
    if self.rejected == "policy" and not self.policy_tries >= 1:
      raise ConfigError(f"dpo.policy_tries must be >= 1, got {self.policy_tries!r}")
    if not self.nll_weight >= 0:
      raise ConfigError(f"dpo.nll_weight must be >= 0 (0 = plain DPO), got {self.nll_weight!r}")
    if not 0.0 <= self.label_smoothing < 0.5:
      raise ConfigError(f"dpo.label_smoothing must be in [0, 0.5), got {self.label_smoothing!r}")


@dataclasses.dataclass(frozen=True)
class GrpoSettings:
  """grpo.*: group relative policy optimisation (train/align/grpo.py). The reward weights are
  checked against the reward functions there (rewards.parse_weights), before anything compiles."""

  LOSS_AGGS: ClassVar[tuple[str, ...]] = ("grpo", "dr_grpo", "dapo")
  SCALE_REWARDS: ClassVar[tuple[str, ...]] = ("group", "none")

  prompts_per_step: int = 16
  # G = 8: a prompt solved with probability p yields a learning signal unless all 8 samples agree
  # (chance p^8 + (1-p)^8, 0.8% at p = 0.5, 17% at p = 0.8); DeepSeekMath's 64 costs 8x the
  # sampling, which on a CPU is most of the step.
  group_size: int = 8
  # beta = 0.04, DeepSeekMath's KL weight: the reward is exact, so there is no reward model to
  # hack and the KL is a mild brake that keeps the policy near the SFT model's answer format.
  # 0 = no reference model.
  beta: float = 0.04
  # epsilon = 0.2, PPO's and GRPO's trust region; epsilon_high = 0.28 is DAPO's clip-higher,
  # which lets unlikely correct tokens grow faster than likely ones shrink. Both only act when
  # mu > 1 (with mu = 1 the ratio is exactly 1).
  epsilon: float = 0.2
  epsilon_high: float = 0.28
  # dapo = token-level mean over the batch: every completion token weighs the same whatever the
  # length of its completion (grpo's per-sequence mean favours short wrong answers and long right
  # ones, Liu et al. 2025), and the scale does not depend on max_new_tokens as dr_grpo's does.
  loss_agg: str = "dapo"
  scale_rewards: str = "group"  # "none" = Dr. GRPO: no division by the group's std
  # mu = 2 updates per sampled batch: each batch of samples serves twice, the second time
  # off-policy under the clip (measured: 0.7% of tokens clipped on average, 4% at most).
  mu: int = 2
  max_new_tokens: int = 6  # "198" plus end-of-text, and slack for wrong lengths
  temperature: float = 1.0  # the policy's own distribution: no tempering of ratios or KL
  rewards: str = "exact_match:1.0,format:0.1"

  def __post_init__(self):
    if not self.group_size >= 2:
      raise ConfigError(
          f"grpo.group_size must be >= 2 (advantages compare samples), got {self.group_size!r}")
    for name in ("prompts_per_step", "mu", "max_new_tokens"):
      if not getattr(self, name) >= 1:
        raise ConfigError(f"grpo.{name} must be >= 1, got {getattr(self, name)!r}")
    if not self.epsilon > 0 or not self.epsilon_high >= self.epsilon:
      raise ConfigError(
          f"grpo.epsilon must be positive and grpo.epsilon_high >= grpo.epsilon, got "
          f"{self.epsilon!r} and {self.epsilon_high!r}")
    if not self.beta >= 0:
      raise ConfigError(f"grpo.beta must be >= 0 (0 = no reference model), got {self.beta!r}")
    if not self.temperature > 0:
      raise ConfigError(f"grpo.temperature must be positive, got {self.temperature!r}")
    if self.loss_agg not in self.LOSS_AGGS:
      raise ConfigError(
          f"grpo.loss_agg={self.loss_agg!r} is unknown; allowed: {', '.join(self.LOSS_AGGS)}")
    if self.scale_rewards not in self.SCALE_REWARDS:
      raise ConfigError(f"grpo.scale_rewards={self.scale_rewards!r} is unknown; allowed: "
                        f"{', '.join(self.SCALE_REWARDS)}")


# Each alignment stage's own section: config.<stage>.
STAGE_SECTIONS = {"sft": SftSettings, "dpo": DpoSettings, "grpo": GrpoSettings}


@dataclasses.dataclass(frozen=True)
class StageSettings:
  """An alignment stage's validated sections, built once by resolve_stage(); `stage` is the
  stage's own section (SftSettings, DpoSettings or GrpoSettings)."""

  task: TaskSettings
  data: StageDataSettings
  train: TrainSettings
  eval: EvalSettings
  checkpoint: CheckpointSettings
  sharding: ShardingSettings
  stage: Any


def resolve_stage(config: ml_collections.ConfigDict, stage: str) -> StageSettings:
  """Checks every setting of an alignment stage's config once (the model is the starting
  policy's, train/align/stage.py); returns its typed sections. Raises ConfigError (MeshError for
  sharding.*) in one line naming the setting."""
  if stage not in STAGE_SECTIONS:
    raise ConfigError(f"unknown alignment stage {stage!r}; allowed: {', '.join(STAGE_SECTIONS)}")
  for name in (stage, "task", "data", "train", "eval", "checkpoint", "sharding"):
    if name not in config:
      raise ConfigError(f"config has no section {name!r}")
  own = _from_section(STAGE_SECTIONS[stage], config[stage], stage, strict=True)
  train = TrainSettings.from_config(config.train)
  if train.init_from:
    raise ConfigError("train.init_from branches a pretraining run; an alignment stage starts "
                      "from --init_workdir, so leave train.init_from empty")
  return StageSettings(
      task=_from_section(TaskSettings, config.task, "task", strict=True),
      data=_from_section(StageDataSettings, config.data, "data", strict=True),
      train=train,
      eval=_from_section(EvalSettings, config.eval, "eval", strict=True),
      checkpoint=CheckpointSettings.from_config(config.checkpoint),
      sharding=ShardingSettings.from_config(config.sharding), stage=own)


# Settings that fix the shape of a run's saved state and data: a workdir trained with one value
# cannot resume with another.
FROZEN_KEYS = ("model", "data.seq_len", "data.vocab_size")


def _lookup(d: dict, dotted: str):
  for part in dotted.split("."):
    d = d[part]
  return d


def frozen_diffs(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """The FROZEN_KEYS on which a saved config.json (a dict) and `config` differ, as
  'key: saved X, requested Y'."""
  saved, new = dict(saved), json.loads(config.to_json())
  # The model as ModelConfig resolves it, defaults filled in: a workdir saved before a field
  # existed (or by a config that left it out) resumes when the field is at its default.
  saved["model"], new["model"] = (
      json.loads(json.dumps(ModelConfig.from_dict(m).to_dict())) for m in (saved["model"], new["model"]))
  diffs = []
  for key in FROZEN_KEYS:
    old_v, new_v = _lookup(saved, key), _lookup(new, key)
    if isinstance(old_v, dict):
      diffs += [f"{key}.{k}: saved {old_v.get(k)!r}, requested {new_v.get(k)!r}"
                for k in sorted(set(old_v) | set(new_v)) if old_v.get(k) != new_v.get(k)]
    elif old_v != new_v:
      diffs.append(f"{key}: saved {old_v!r}, requested {new_v!r}")
  return diffs


# What a workdir's data is: a resume that changes one of these trains on, and validates on,
# other text.
DATA_KEYS = ("paths", "sources", "text_field")


def _data_value(key: str, value: Any) -> Any:
  """data.KEY comparable across spellings: paths as a list ("a, b" == ["a", "b"])."""
  if key == "paths" and isinstance(value, str):
    return [p.strip() for p in value.split(",") if p.strip()]
  if key == "text_field":
    return value or "text"
  return json.loads(json.dumps(value if value is not None else []))  # tuples as lists


def data_diffs(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """The DATA_KEYS on which a saved config.json and `config` differ, as
  'data.KEY: saved X, requested Y'."""
  old, new = saved.get("data", {}), json.loads(config.to_json()).get("data", {})
  defaults = {f.name: f.default for f in dataclasses.fields(DataSettings)}
  diffs = []
  for key in DATA_KEYS:
    a, b = (_data_value(key, d.get(key, defaults[key])) for d in (old, new))
    if a != b:
      diffs.append(f"data.{key}: saved {a!r}, requested {b!r}")
  return diffs


def read_saved(workdir: str) -> Optional[dict]:
  """The workdir's config.json as a dict, None when it has none."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def check_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Refuses to resume a workdir whose saved config has another model or data shape."""
  saved = read_saved(workdir)
  diffs = [] if saved is None else frozen_diffs(saved, config)
  if diffs:
    raise ConfigError(
        f"workdir {workdir} was trained with another shape ({'; '.join(diffs)}); "
        "use a new --workdir or the saved settings")


def save(workdir: str, config: ml_collections.ConfigDict,
         resolved: Optional[Mapping[str, Any]] = None) -> None:
  """Writes config.json; the run it branched from ("parent", train/branch.py), once recorded,
  stays in it on every resume. resolved: what this invocation ran on (train/banner.py
  resolved_record: the mesh's axis sizes with -1 resolved, the devices), saved as "resolved" and
  rewritten by every resume; readers of the settings ignore it."""
  saved = read_saved(workdir)
  record = json.loads(config.to_json())
  if resolved is not None:
    record["resolved"] = dict(resolved)
  if saved is not None and "parent" in saved:
    record["parent"] = saved["parent"]
  files.write_json_atomic(os.path.join(workdir, "config.json"), record, indent=2)
