"""The shell shared by SFT, DPO and GRPO: start the policy, resume, loop, evaluate, record.

A stage's workdir has the layout of a pretraining workdir (config.json with `model` and `train`,
tokenizer.json, checkpoints/ holding {step, params, opt_state, rng} as train/step.py makes it,
metrics.jsonl, tensorboard/), so checkpoint.load_params, the generation script and the next stage
read it unchanged. A stage starts from --init_workdir (any such workdir) or, for SFT only, from a
fresh model with a byte-level tokenizer. Rerunning the same command resumes from the newest
checkpoint: the batches are a function of the step and the PRNG key is in the state, so the run
continues as if it had never stopped. The frozen reference (DPO, GRPO with beta > 0) is the
init_workdir's policy, read again on resume.

A stage trains exactly as pretraining does: its objective is a loss function (sft.loss, dpo.loss,
grpo.loss) run by train/step.py's one step, sharded by state.build_sharded_training over the
config's `sharding` section (mesh, zero_stage; any mesh resumes any checkpoint of the run), in
loop.run_steps. Generation and the reference's log-probs are jitted functions of the sharded
parameters: XLA gathers what they read.

Metrics are read back every step: the models here are small and the step is short, so the
simplicity is worth more than the overlap of host and device.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from tokenizers import Tokenizer

from model import generation, sampling, transformer
from model.config import ModelConfig, count_params, flops_per_token
from sharding import mesh as mesh_lib
from train.align import data as data_lib
from train import checkpoint as ckpt_lib
from train import banner
from train import files
from train import loop as loop_lib
from train import metrics as metrics_lib
from train import mfu as mfu_lib
from train import optimizer as optimizer_lib
from train import plots
from train import provenance
from train import state as state_lib
from train.align import rewards as rewards_lib
from train import config as config_lib
from train import step as step_lib
from train import workdir_lock
from train.data import tokenizer as tokenizer_lib
from train.config import ConfigError
from train.loop import NonFiniteLoss


# A stage's learning rate when it starts from an imported Hugging Face model (experiments.convert)
# and the command line did not choose one: the stage configs' rates (SFT 3e-3, DPO 3e-4, GRPO
# 1e-4) are for the small models trained here, and would wreck a model pretrained at scale.
# Fine-tuning rates are 1e-5 to 5e-5 for SFT (2e-5, as TRL's SFT default) and far lower for
# preference and RL updates (1e-6, as TRL's DPO and GRPO defaults).
IMPORTED_LR = {"sft": 2e-5, "dpo": 1e-6, "grpo": 1e-6}


def is_imported(workdir: str) -> bool:
  """Whether workdir holds a model imported from Hugging Face (train/hf_workdir.py keeps the
  original config.json under hf/ there)."""
  from train import hf_workdir

  return bool(workdir) and os.path.exists(os.path.join(workdir, hf_workdir.HF_DIR, "config.json"))


def finetune_lr(stage: str, init_workdir: str, argv: list[str]) -> Optional[float]:
  """IMPORTED_LR[stage] when init_workdir is an imported model and the command line argv chose
  no rate (no --config.train.lr, no config file of its own); else None (train.lr stands)."""
  chosen = any(a.startswith(("--config.train.lr", "--config=")) or a == "--config"
               for a in argv[1:])
  return None if chosen or not is_imported(init_workdir) else IMPORTED_LR[stage]


@dataclasses.dataclass
class Policy:
  model_cfg: ModelConfig
  graphdef: nnx.GraphDef
  params: nnx.State
  tok: Tokenizer


def byte_tokenizer() -> Tokenizer:
  """Byte-level BPE with no merges: one token per byte plus end-of-text and padding.

  For arithmetic a digit per token is what a small model learns from; merged digit runs would
  hide the carries inside token identities.
  """
  return tokenizer_lib.train_bpe([], tokenizer_lib.min_vocab_size())


def start_policy(config: ml_collections.ConfigDict, workdir: str, init_workdir: str,
                 seed: int) -> Policy:
  """The starting policy: init_workdir's newest checkpoint, or a fresh model (config.model).

  The tokenizer is the workdir's own on resume, else copied from init_workdir, else byte-level.
  seed: train.seed, the fresh model's initialisation.
  """
  os.makedirs(workdir, exist_ok=True)
  if init_workdir:
    model_cfg, graphdef, params = ckpt_lib.load_params(init_workdir)
    tok_source = tokenizer_lib.load(init_workdir)
  else:
    if "model" not in config:
      raise ConfigError("no --init_workdir and no config.model to start a fresh model from")
    tok_source = byte_tokenizer()
    fields = config.model.to_dict()
    fields["vocab_size"] = tok_source.get_vocab_size()  # the embedding follows the tokenizer
    model_cfg = ModelConfig.from_dict(fields)
    graphdef, params = transformer.create(model_cfg, jax.random.key(seed))
  if os.path.exists(os.path.join(workdir, tokenizer_lib.FILENAME)):
    tok = tokenizer_lib.load(workdir)
  else:
    tok = tok_source
    tokenizer_lib.save(tok, workdir)
  if tok.get_vocab_size() > model_cfg.vocab_size:
    raise ConfigError(
        f"the tokenizer of {workdir} has {tok.get_vocab_size()} tokens but the model's "
        f"vocab_size is {model_cfg.vocab_size}; use a new --workdir")
  return Policy(model_cfg, graphdef, params, tok)


def _check_resume(workdir: str, model_cfg: ModelConfig, init_workdir: str) -> None:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    saved = json.load(f)
  if saved.get("model") != json.loads(json.dumps(model_cfg.to_dict())):
    raise ConfigError(
        f"workdir {workdir} holds a run of another model; use a new --workdir")
  if saved.get("init_workdir", "") != init_workdir:
    raise ConfigError(
        f"workdir {workdir} was started from --init_workdir={saved.get('init_workdir', '')!r}, "
        f"not {init_workdir!r}; use a new --workdir")


# One jitted generate per (model, graph, decoding): the validation and test evaluators of a run
# share it, and so its compilation, when their prompts have one padded length.
_generate_for = functools.lru_cache(maxsize=4)(generation.make_generate)


def make_completer(policy: Policy, prompts: list[str], *, batch_size: int, max_new_tokens: int,
                   temperature: float) -> Callable[[nnx.State, jax.Array], list[rewards_lib.Sample]]:
  """complete(params, key) -> one completion per prompt, as Samples (answer left empty).

  Batches of batch_size, the last one padded with copies of the first prompt (dropped), so one
  compiled generate serves every batch. Temperature 0 is greedy decoding; otherwise row i draws
  with the i-th of split(key, len(prompts)).
  """
  tok, cfg = policy.tok, policy.model_cfg
  eot_id = tokenizer_lib.special_id(tok, tokenizer_lib.EOT)
  p_len = data_lib.prompt_length(tok, prompts)
  if p_len + max_new_tokens > cfg.max_seq_len:
    raise ConfigError(
        f"prompts of {p_len} tokens plus {max_new_tokens} new tokens exceed the model's "
        f"max_seq_len={cfg.max_seq_len}")
  n = len(prompts)
  batch_size = min(batch_size, n)
  spec = generation.DecodeSpec(max_new_tokens, eot_id,
                           sampling.SamplingConfig(temperature=temperature))
  generate = _generate_for(cfg, policy.graphdef, spec)
  padded = list(prompts) + [prompts[0]] * (-n % batch_size)
  encoded = data_lib.encode_prompts(tok, padded, p_len)

  def complete(params, key) -> list[rewards_lib.Sample]:
    keys_N = jax.random.split(key, len(padded))
    out = []
    for i in range(0, len(padded), batch_size):
      rows = generation.trim(generate(
          params, jnp.asarray(encoded.tokens_NxP[i:i + batch_size]),
          jnp.asarray(encoded.lengths_N[i:i + batch_size]), keys_N[i:i + batch_size]))
      out += [rewards_lib.sample_of(tok, padded[i + j], ids, eot_id, "")
              for j, ids in enumerate(rows)]
    return out[:n]

  return complete


def make_evaluator(policy: Policy, examples: list[data_lib.Prompted], *, batch_size: int,
                   max_new_tokens: int) -> Callable[[nnx.State], dict[str, float]]:
  """evaluate(params) -> {"accuracy": held-out exact match with greedy decoding,
  "completion_chars": mean characters generated before end-of-text}."""
  complete = make_completer(policy, [e.prompt for e in examples], batch_size=batch_size,
                            max_new_tokens=max_new_tokens, temperature=0.0)

  def evaluate(params) -> dict[str, float]:
    samples = complete(params, jax.random.key(0))
    correct = sum(rewards_lib.exact_match(s._replace(answer=e.answer))
                  for s, e in zip(samples, examples))
    length = sum(len(s.completion) for s in samples)
    return {"accuracy": correct / len(examples), "completion_chars": length / len(examples)}

  return evaluate


def score_test(workdir: str, step: Optional[int] = None) -> dict[str, float]:
  """The test set's {"accuracy", "completion_chars", "examples"} of a finished stage run's
  checkpoint at `step` (None: its newest), scored by the evaluator the run's test/* comes from
  (make_evaluator on the run's own test examples and eval settings, from its config.json): a study
  that chose a step on validation reports this step's test accuracy, scored once."""
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    saved = json.load(f)
  settings = config_lib.resolve_stage(ml_collections.ConfigDict(saved), saved["stage"])
  model_cfg, graphdef, params = ckpt_lib.load_params(workdir, step=step)
  policy = Policy(model_cfg, graphdef, params, tokenizer_lib.load(workdir))
  _, test = data_lib.heldout_examples(settings.data, settings.task)
  ev = settings.eval
  evaluate = make_evaluator(policy, test[:ev.max_examples], batch_size=ev.batch_size,
                            max_new_tokens=ev.max_new_tokens)
  return {**evaluate(params), "examples": len(test[:ev.max_examples])}


class Run:
  """One stage's run in `workdir`: policy, mesh, optimizer, writers; start() builds the sharded
  step of the stage's loss and the state (fresh or resumed) in its layout."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, init_workdir: str, *,
               stage: str, stage_settings: config_lib.StageSettings, total_updates: int,
               batch_rows: Optional[int] = None,
               profile_steps: Optional[tuple[int, int]] = None):
    """stage_settings: config.resolve_stage(config, stage), which the stage reads before the run starts.
    batch_rows: the rows of one step's batch where that is not train.batch_size (GRPO's).
    profile_steps: (first, last) steps traced into <workdir>/profile, or None.

    Holds the workdir's lock (train/workdir_lock.py) from here to the end of loop(); a second
    run on the workdir stops here naming the holder. A failure in between leaves it to the
    process's exit (or to this process's next Run on the workdir, which adopts it)."""
    self.lock = workdir_lock.hold(workdir, enabled=jax.process_index() == 0)
    try:
      self._setup(config, workdir, init_workdir, stage, stage_settings, total_updates,
                  batch_rows, profile_steps)
    except BaseException:
      self.lock.release()
      raise

  def _setup(self, config: ml_collections.ConfigDict, workdir: str, init_workdir: str,
             stage: str, stage_settings: config_lib.StageSettings, total_updates: int,
             batch_rows: Optional[int], profile_steps: Optional[tuple[int, int]]) -> None:
    self.profile = loop_lib.profile_in(workdir, profile_steps)
    self.stage_settings = stage_settings
    self.train, self.checkpoint, self.sharding = (
        stage_settings.train, stage_settings.checkpoint, stage_settings.sharding)
    # Data files are read first, so that a malformed one fails before anything compiles.
    validation, test = data_lib.heldout_examples(stage_settings.data, stage_settings.task)
    self.config, self.workdir, self.stage = config, workdir, stage
    self.init_workdir = init_workdir
    self.policy = start_policy(config, workdir, init_workdir, self.train.seed)
    _check_resume(workdir, self.policy.model_cfg, init_workdir)
    t = self.train
    self.mesh = mesh_lib.make_mesh(self.sharding.mesh)
    self.zero_stage = self.sharding.zero_stage
    loop_lib.validate_sharding(t, self.sharding, self.policy.model_cfg, self.mesh,
                               batch_size=batch_rows)
    self.total_updates = total_updates
    self.tx = optimizer_lib.make(t, total_updates)
    self.lr_schedule = optimizer_lib.schedule_for(t, total_updates)
    moe = self.policy.model_cfg.moe
    self.aux_weights = (moe.aux_loss_weight, moe.z_loss_weight)
    self._save_config()
    self.pad_id = tokenizer_lib.special_id(self.policy.tok, tokenizer_lib.PAD)
    self.eot_id = tokenizer_lib.special_id(self.policy.tok, tokenizer_lib.EOT)
    self.ckpt = ckpt_lib.Checkpointer.of(os.path.join(workdir, "checkpoints"), self.checkpoint)
    self.training: Optional[state_lib.ShardedTraining] = None
    self.state: Optional[dict] = None
    self.start_step, self.data_state = 0, {}
    # Set by loop(): when it started, when the current step started, the newest checkpoint's
    # data state.
    self._t0 = self._step_started = 0.0
    # The tokens the train step has read since the current step started (every update of it:
    # GRPO's mu), and its training FLOPs per token and the devices' peak, for tokens_per_sec and
    # mfu (set by start()).
    self._step_tokens, self._flops_per_token, self._peak_flops = 0, 0.0, 0.0
    self._saved: dict = {}
    self.writer = metrics_lib.MetricsWriter(workdir, t.loggers, dataclasses.asdict(stage_settings))
    ev = stage_settings.eval
    # evaluate: validation, what the run's choices read (eval/*, SFT's stop); evaluate_test: the
    # test set, scored at the start and the end only, the accuracy the run reports (test/*).
    self.evaluate = make_evaluator(self.policy, validation[:ev.max_examples],
                                   batch_size=ev.batch_size, max_new_tokens=ev.max_new_tokens)
    self.evaluate_test = make_evaluator(self.policy, test[:ev.max_examples],
                                        batch_size=ev.batch_size, max_new_tokens=ev.max_new_tokens)
    self.n_validation = min(len(validation), ev.max_examples)
    self.n_heldout = min(len(test), ev.max_examples)

  def start(self, loss_fn: step_lib.LossFn, example_batch: Any,
            train_data: str = "") -> Callable[[dict, Any], tuple]:
    """The stage's train step, step(state, batch of host arrays) -> (state, metrics), for batches
    shaped like example_batch; sets self.state: the newest checkpoint's, else the starting
    policy's parameters with a fresh optimizer state, in the ZeRO stage's layout on the mesh.
    Prints the start-up banner (train/banner.py); train_data: the training data in the stage's
    words ("4000 examples"), for it."""
    t = self.train
    abstract = lambda tree: jax.tree.map(  # noqa: E731
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
    # The copy keeps the state's buffers apart from the ones it starts from, which the donating
    # train step would otherwise free.
    build = lambda stage: state_lib.build_sharded_training(  # noqa: E731
        self.policy.graphdef, lambda p: jax.tree.map(jnp.copy, p), abstract(self.policy.params),
        loss_fn, self.tx, lr_schedule=self.lr_schedule, grad_accum=t.grad_accum, seed=t.seed,
        mesh=self.mesh, zero_stage=stage, abstract_batch=abstract(example_batch))
    verdict = loop_lib.check_memory(self.sharding, build, abstract(example_batch))
    self.training = training = build(self.zero_stage)
    restored = self.ckpt.restore_latest(training.abstract_state)
    if restored is None:
      self.state, self.start_step = training.init(self.shard(self.policy.params)), 0
    else:
      self.start_step, self.state, self.data_state = restored
    _, seq_len = batch_tokens(example_batch)
    self._flops_per_token = flops_per_token(self.policy.model_cfg, seq_len)
    self._peak_flops = mfu_lib.peak_flops() * jax.device_count()
    banner.show(self._banner(train_data, verdict))

    def step(state, batch):
      self._step_tokens += batch_tokens(batch)[0]
      return training.train_step(state, loop_lib.global_batch(batch, training.batch_sharding))

    return step

  def _banner(self, train_data: str, memory: Optional[str]) -> list[str]:
    """train/banner.py's lines for this stage (after start() has restored or initialised)."""
    ev, d = self.stage_settings.eval, self.stage_settings.data
    source = f"data.train_path={d.train_path}" if d.train_path else "the task's problems"
    data = (f"{source} ({train_data or 'training data'}); validation {self.n_validation}, "
            f"test {self.n_heldout} examples (greedy, {ev.max_new_tokens} new tokens)")
    init = (f"--init_workdir={self.init_workdir}" if self.init_workdir
            else "a fresh model (config.model) with a byte-level tokenizer")
    t = self.train
    if self.total_updates != t.steps:  # GRPO's mu updates a step: the schedule counts updates
      t = dataclasses.replace(t, steps=self.total_updates)
    return banner.stage_lines(
        self.stage, self.workdir, self.mesh, model_cfg=self.policy.model_cfg, train_settings=t,
        sharding_settings=self.sharding, init=init, data=data,
        start=banner.start_text(self.start_step), memory=memory)

  def shard(self, params: nnx.State) -> nnx.State:
    """params (wherever they are) in the policy's layout on the mesh (after start())."""
    return jax.device_put(jax.device_get(params), self.training.shardings.params)

  def _save_config(self) -> None:
    if jax.process_index() != 0:
      return
    record = json.loads(self.config.to_json())
    record["model"] = self.policy.model_cfg.to_dict()
    record["stage"] = self.stage
    record["init_workdir"] = self.init_workdir
    record["resolved"] = banner.resolved_record(self.mesh)  # the mesh and devices it ran on
    files.write_json_atomic(os.path.join(self.workdir, "config.json"), record, indent=2)

  def loop(self, train_step: Callable[[int, dict], tuple[dict, dict]], *,
           stop_when: Optional[Callable[[dict], bool]] = None) -> dict[str, Any]:
    """Runs train_step(step index, state) -> (state, metrics) until config.train.steps, in
    train/loop.py's run_steps, every step's metrics read back at once.

    Validation accuracy (eval/*) is evaluated before the first step of a fresh run, every
    train.eval_every steps and at the end; stop_when(record) ends the run early after one (SFT's
    target accuracy). Test accuracy (test/*), the number a run reports, is evaluated before the
    first step of a fresh run (the starting point every gain is measured from) and at the end,
    and nothing reads it to decide.
    """
    summary: dict[str, Any] = {"stage": self.stage, "invocation_start_step": self.start_step,
                               "params": count_params(self.policy.model_cfg)["total"],
                               "heldout_examples": self.n_heldout,  # the test set's size
                               "test_examples": self.n_heldout,
                               "validation_examples": self.n_validation,
                               "device": jax.devices()[0].device_kind}
    if self.start_step == 0:
      first = {f"eval/{k}": v for k, v in self.evaluate(self.state["params"]).items()}
      first.update({f"test/{k}": v for k, v in self.evaluate_test(self.state["params"]).items()})
      self.writer.write(0, first)
      self._print(0, first)
    self._t0 = self._step_started = time.perf_counter()
    self._saved = dict(self.data_state)  # what the newest checkpoint holds beside the state
    last = self.train.steps
    if self.data_state.get("stopped_early"):  # a rerun of a finished run changes nothing
      summary["stopped_early"] = self.data_state["stopped_early"]
      last = self.start_step

    def timed_step(step: int, state):
      self._step_started, self._step_tokens = time.perf_counter(), 0
      return train_step(step, state)

    hooks = loop_lib.Hooks(
        report=self._report, save=functools.partial(self._save, summary),
        must_save=lambda step: step % self.checkpoint.every_steps == 0,
        read_now=lambda step: True,  # small models, short steps: simplicity over overlap
        stop_when=lambda r: "eval/accuracy" in r and stop_when is not None and stop_when(r),
        temporary_due=self.ckpt.temporary_due,
        save_temporary=lambda step, state: self._save(summary, step, state, False, temporary=True),
        wait_saved=self.ckpt.wait)
    try:
      self.state, step, signalled, _ = loop_lib.run_steps(
          self.state, self.start_step, last, timed_step, hooks, self.profile)
      if signalled is not None:
        summary["stopped_by_signal"] = signalled
      else:
        self._report_test(step, summary)
    finally:
      self.writer.close()
      self.ckpt.close()
      self.lock.release()
    summary["final_step"] = step
    summary["invocation_wall_time_s"] = time.perf_counter() - self._t0  # this invocation's loop
    # The training loops of every invocation up to the last checkpoint, resumptions included.
    summary["wall_time_s_total"] = self._saved.get("wall_s", summary["invocation_wall_time_s"])
    return summary

  def _report_test(self, step: int, summary: dict[str, Any]) -> None:
    """The test accuracy of the final state, logged at its step as test/* and put in the
    summary: scored once the run's choices (its stop included) are made."""
    final = {f"test/{k}": v for k, v in self.evaluate_test(self.state["params"]).items()}
    self.writer.write(step, final)
    summary["test_accuracy"] = final["test/accuracy"]
    self._print(step, final)

  def _print(self, step: int, record: dict) -> None:
    """The console line of a logged record (train/metrics.py console_line), on process 0."""
    if jax.process_index() == 0:
      print(metrics_lib.console_line(step, record), flush=True)

  def _report(self, step: int, metrics, state) -> dict:
    """loop.Hooks.report: the step's metrics and time, held-out accuracy when due, logged."""
    t = self.train
    record = {k: float(v) for k, v in jax.device_get(metrics).items()}
    seconds = time.perf_counter() - self._step_started
    record.update(step_time_s=seconds, tokens_per_sec=self._step_tokens / seconds,
                  mfu=self._flops_per_token * self._step_tokens / seconds / self._peak_flops)
    if not np.isfinite(record["loss"]):
      raise NonFiniteLoss(
          f"loss is {record['loss']} at step {step}; stopped without saving, the last good "
          f"checkpoint ({max(self.ckpt.steps(), default='none')}) is untouched; lower "
          "train.lr")
    if step % t.eval_every == 0 or step == t.steps:
      record.update({f"eval/{k}": v for k, v in self.evaluate(state["params"]).items()})
    if step % t.log_every == 0 or "eval/accuracy" in record:
      self.writer.write(step, record)
      self._print(step, record)
    return record

  def _save(self, summary: dict[str, Any], step: int, state, early: bool,
            temporary: bool = False) -> None:
    """loop.Hooks.save (and save_temporary): the state, with the training wall time so far
    beside it (and, after an early stop, why: a rerun then changes nothing)."""
    saved = {"step": step,
             "wall_s": self.data_state.get("wall_s", 0.0) + time.perf_counter() - self._t0}
    if early:
      summary["stopped_early"] = saved["stopped_early"] = f"stop condition met at step {step}"
    self.ckpt.save(step, state, saved, temporary=temporary)
    self._saved = saved


def batch_tokens(batch: Any) -> tuple[int, int]:
  """(tokens, sequence length) of a stage's batch: the sizes of its "inputs" arrays (DPO's
  chosen and rejected both), the length of the last one."""
  tokens, seq_len = 0, 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(batch)[0]:
    if getattr(path[-1], "key", None) == "inputs":
      tokens += int(np.prod(leaf.shape))
      seq_len = int(leaf.shape[-1])
  return tokens, seq_len


# ---------------------------------------------------------------------------------------------
# Results: results.json and a plot of the curves, from metrics.jsonl.


def write_results(workdir: str, summary: dict, keys: list[str], out_dir: str = "") -> dict:
  """Writes results.json and curves.png into the workdir (and out_dir when given).

  results.json: the summary; the test accuracy at the start and at the end (test_accuracy_*,
  and under its name before the validation split, heldout_accuracy_*); the validation accuracy
  curve the run's choices read; and for every key its first and last logged value and the mean
  over the last tenth of the logged steps.
  """
  records = metrics_lib.by_step(workdir)
  evals = [(r["step"], r["eval/accuracy"]) for r in records if "eval/accuracy" in r]
  tests = [(r["step"], r["test/accuracy"]) for r in records if "test/accuracy" in r]
  result = dict(summary)
  if tests:
    result["test_accuracy_start"] = result["heldout_accuracy_start"] = tests[0][1]
    result["test_accuracy_end"] = result["heldout_accuracy_end"] = tests[-1][1]
  if evals:
    result["validation_accuracy_end"] = evals[-1][1]
    result["validation_accuracy_curve"] = evals
  for k in keys:
    values = [(r["step"], r[k]) for r in records if isinstance(r.get(k), (int, float))]
    if values:
      result[f"{k}@first"] = values[0][1]
      result[f"{k}@last"] = values[-1][1]
      tail = [v for _, v in values[-max(1, len(values) // 10):]]
      result[f"{k}@last10%_mean"] = sum(tail) / len(tail)  # one batch is a noisy reading
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    result["provenance"] = provenance.provenance(json.load(f))
  for d in [workdir] + ([out_dir] if out_dir else []):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "results.json"), "w", encoding="utf-8") as f:
      json.dump(result, f, indent=2, default=str)
    plots.plot_curves(records, ["eval/accuracy"] + keys, os.path.join(d, "curves.png"),
                      result["stage"])
  return result
