"""Downstream tasks on a saved run: multiple choice scored by log-likelihood, generation scored by
exact match, and EleutherAI's lm-evaluation-harness LM interface over the same scoring.

A task file is JSONL, one item a line (docs/evaluation.md):
  {"context": "2+3=", "choices": ["5", "6", "23"], "answer": 0}   multiple choice: right when
      the answer's continuation is the likeliest, log P(choice | context) summed over its tokens
  {"prompt": "2+3=", "target": "5"}                                generation: right when the
      greedy continuation, cut at the first newline, equals the target (whitespace stripped)

Scoring reads the run as decoding does (train/saved_run.py): the context after the run's start
token(s), each choice tokenized on its own after it. A sequence longer than max_seq_len + 1 loses
the oldest context tokens. Every batch is padded to batch_size rows of a power-of-two length, so a
task compiles the forward pass a few times at most.

The same Scorer serves a saved run (saved_run.Loaded.of(workdir)) and pretraining's live state
(train.eval_tasks: LiveTasks, a Scorer over the training graphdef, the run's tokenizer and mesh,
given the state's parameters at each evaluation step by Scorer.with_params): one copy of the
scoring, so the numbers logged during training are those evaluate_items gives on the saved run.

HarnessLM answers lm-evaluation-harness's requests (objects with .args): loglikelihood
(context, continuation), loglikelihood_rolling (text, in windows of max_seq_len tokens) and
generate_until (context, {"until", "max_gen_toks", "temperature"}); harness_lm() makes it a
subclass of the harness's LM, importing lm_eval then and only then (it is not a dependency).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from model import transformer
from model.config import ModelConfig
from train import config as config_lib
from train import files
from train import saved_run
from train import step as step_lib
from train.data import tokenizer as tokenizer_lib

GEN_STOP = ("\n",)


class Scorer:
  """log P(continuation | context) of token sequences under a loaded run, in padded batches."""

  def __init__(self, run: saved_run.Loaded, batch_size: int = 8, mesh: Optional[Mesh] = None):
    """mesh: where run.params live (a training run's); the token batches are then placed
    replicated on it and the sums come back replicated, as every process of a multi-host run
    needs them. None: wherever the parameters are (a saved run)."""
    self.run, self.batch_size = run, batch_size
    graphdef = run.graphdef
    replicated = NamedSharding(mesh, PartitionSpec()) if mesh is not None else None
    self._put = (lambda x: x) if replicated is None else (
        lambda x: jax.device_put(x, replicated))

    def sums(params, inputs_BxT, targets_BxT, mask_BxT):
      logits_BxTxV = transformer.apply(graphdef, params, inputs_BxT)
      logp_BxT = step_lib.token_logps(logits_BxTxV, targets_BxT)
      greedy_BxT = (jnp.argmax(logits_BxTxV, -1) == targets_BxT) | ~mask_BxT
      return jnp.sum(logp_BxT * mask_BxT, -1), jnp.all(greedy_BxT, -1)

    self._sums = jax.jit(sums, out_shardings=replicated)

  def with_params(self, params: Any) -> "Scorer":
    """This scorer over other parameters of the same model (the live state at an evaluation
    step): the compiled forward passes are shared, not compiled again."""
    other = copy.copy(self)
    other.run = dataclasses.replace(self.run, params=params)
    return other

  def tokens(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
    """(log-likelihood, whether every continuation token is the argmax) of each (context ids,
    continuation ids); the context needs at least one token."""
    out = []
    for lo in range(0, len(pairs), self.batch_size):
      out += self._batch(pairs[lo:lo + self.batch_size])
    return out

  def _batch(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
    limit = self.run.cfg.max_seq_len + 1
    rows, n_cont = [], []
    for ctx, cont in pairs:
      if not ctx:
        raise ValueError("a continuation needs a context of at least one token")
      rows.append((ctx + cont)[-limit:])
      n_cont.append(min(len(cont), limit - 1))
    longest = max(len(r) for r in rows) - 1  # inputs are rows less their last token
    t = min(1 << (longest - 1).bit_length(), limit - 1)  # a power of two: few compiled shapes
    b = self.batch_size  # a short last batch is padded with rows that count nothing: one shape
    inputs, targets = np.zeros((b, t), np.int32), np.zeros((b, t), np.int32)
    mask = np.zeros((b, t), bool)
    for i, (row, n) in enumerate(zip(rows, n_cont)):
      inputs[i, :len(row) - 1], targets[i, :len(row) - 1] = row[:-1], row[1:]
      mask[i, len(row) - 1 - n:len(row) - 1] = True  # the last n targets: the continuation
    logp_B, greedy_B = self._sums(self.run.params, *map(self._put, (inputs, targets, mask)))
    pairs_out = zip(jax.device_get(logp_B), jax.device_get(greedy_B))
    return [(float(lp), bool(g)) for lp, g in list(pairs_out)[:len(rows)]]

  def text(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
    """tokens() of (context, continuation) strings: the context after the start token(s), the
    continuation tokenized on its own."""
    tok = self.run.tokenizer
    return self.tokens([(self.run.prompt_ids(c), tokenizer_lib.encode(tok, x)) for c, x in pairs])


def read_items(path: str) -> list[dict[str, Any]]:
  """A task file's items, each checked to be one of the two kinds (DataError naming path:line)."""
  items = []
  for n, item in files.iter_jsonl(path, bad_line="not a JSON object ({msg})"):
    where = f"{path}:{n}"
    if not isinstance(item, dict):
      raise files.DataError(f"{where}: not a JSON object")
    mc = isinstance(item.get("choices"), list) and isinstance(item.get("context"), str)
    if mc and not (item["choices"] and isinstance(item.get("answer"), int)
                   and 0 <= item["answer"] < len(item["choices"])):
      raise files.DataError(f"{where}: 'answer' must index 'choices'")
    if not mc and not (isinstance(item.get("prompt"), str) and isinstance(item.get("target"), str)):
      raise files.DataError(f"{where}: expected {{\"context\", \"choices\", \"answer\"}} or "
                            "{\"prompt\", \"target\"}")
    items.append(item)
  return items


def choice_scores(scorer: Scorer, item: dict[str, Any]) -> list[float]:
  """log P(choice | context) of each choice of a multiple-choice item."""
  return all_choice_scores(scorer, [item])[0]


def all_choice_scores(scorer: Scorer, items: Sequence[dict[str, Any]]) -> list[list[float]]:
  """choice_scores of every item, the choices of all items batched together."""
  pairs = [(it["context"], c) for it in items for c in it["choices"]]
  flat = [lp for lp, _ in scorer.text(pairs)] if pairs else []
  out, lo = [], 0
  for it in items:
    out.append(flat[lo:lo + len(it["choices"])])
    lo += len(it["choices"])
  return out


def evaluate_items(scorer: Scorer, items: Sequence[dict[str, Any]],
                   max_new_tokens: int = 16) -> dict[str, Any]:
  """{"accuracy", "mc_accuracy", "answer_logp", "mc_items", "exact_match", "gen_items"} over a
  task's items: accuracy over every item (a choice item right when its answer scores highest, a
  generation item when it matches), mc_accuracy and exact_match over the items of each kind,
  answer_logp the mean log P(answer | context) of the choice items (each None when the task has
  no item of its kind)."""
  mc = [it for it in items if "choices" in it]
  gen = [it for it in items if "choices" not in it]
  scores = all_choice_scores(scorer, mc)
  right = sum(int(np.argmax(s) == it["answer"]) for s, it in zip(scores, mc))
  matched = 0
  if gen:
    outs, _ = saved_run.generate_batch(scorer.run, [it["prompt"] for it in gen], max_new_tokens,
                                       temperature=0.0, stop=GEN_STOP,
                                       batch_size=scorer.batch_size)
    matched = sum(o["continuation"].strip() == it["target"].strip() for o, it in zip(outs, gen))
  answer_logp = [s[it["answer"]] for s, it in zip(scores, mc)]
  return {"accuracy": (right + matched) / len(items) if items else None,
          "mc_accuracy": right / len(mc) if mc else None,
          "answer_logp": float(np.mean(answer_logp)) if mc else None, "mc_items": len(mc),
          "exact_match": matched / len(gen) if gen else None, "gen_items": len(gen)}


def task_record(name: str, report: dict[str, Any]) -> dict[str, float]:
  """evaluate_items' report as logged (metrics.jsonl, the loggers, the console):
  task/NAME/accuracy, and task/NAME/mc_accuracy, task/NAME/answer_logp, task/NAME/exact_match
  where the task has items of that kind."""
  keys = ("accuracy", "mc_accuracy", "answer_logp", "exact_match")
  return {f"task/{name}/{k}": float(report[k]) for k in keys if report[k] is not None}


def read_tasks(paths: Sequence[str], max_items: int) -> list[tuple[str, list[dict[str, Any]]]]:
  """[(name, its first max_items items)] of train.eval_tasks' files, read and checked when a run
  starts: a missing file, a bad line or an empty file is one ConfigError naming train.eval_tasks
  (and path:line)."""
  tasks = []
  for path in paths:
    if not os.path.isfile(path):
      raise config_lib.ConfigError(f"train.eval_tasks: no task file {path}")
    try:
      items = read_items(path)
    except (files.DataError, OSError) as e:
      raise config_lib.ConfigError(f"train.eval_tasks: {e}") from None
    if not items:
      raise config_lib.ConfigError(f"train.eval_tasks: {path} holds no item")
    tasks.append((config_lib.task_name(path), items[:max_items]))
  return tasks


class LiveTasks:
  """train.eval_tasks on a training run's live state: the tasks read at start-up (read_tasks),
  scored at each evaluation by evaluate_items with a Scorer over the training graphdef, the
  run's tokenizer and its mesh, given the state's parameters (no checkpoint written or read).
  Calling it with the parameters returns the task_record of every task."""

  def __init__(self, tasks: Sequence[tuple[str, list[dict[str, Any]]]], cfg: ModelConfig,
               graphdef: Any, tokenizer: Any, mesh: Optional[Mesh] = None, batch_size: int = 8,
               workdir: str = "", max_new_tokens: int = 16):
    self.tasks, self.max_new_tokens = list(tasks), max_new_tokens
    self.scorer = Scorer(saved_run.Loaded(workdir, cfg, graphdef, None, tokenizer), batch_size, mesh)
    for name, items in self.tasks:  # a prompt with no room to generate: one line, before training
      for n, it in enumerate(items, 1):
        if "prompt" in it and len(self.scorer.run.prompt_ids(it["prompt"])) >= cfg.max_seq_len:
          raise config_lib.ConfigError(
              f"train.eval_tasks: item {n} of task {name!r} has a prompt of max_seq_len="
              f"{cfg.max_seq_len} tokens or more, leaving no room to generate")

  def __call__(self, params: Any) -> dict[str, float]:
    scorer = self.scorer.with_params(params)
    record = {}
    for name, items in self.tasks:
      record.update(task_record(name, evaluate_items(scorer, items, self.max_new_tokens)))
    return record


class HarnessLM:
  """lm-evaluation-harness's LM interface over a saved run (module docstring)."""

  def __init__(self, workdir: str, batch_size: int = 8):
    super().__init__()  # the harness's LM.__init__, when harness_lm() mixed it in
    self.scorer = Scorer(saved_run.Loaded.of(workdir), batch_size)

  def loglikelihood(self, requests) -> list[tuple[float, bool]]:
    return self.scorer.text([tuple(r.args[:2]) for r in requests])

  def loglikelihood_rolling(self, requests) -> list[float]:
    """The whole text's log-likelihood after the start token(s), max_seq_len targets a window;
    a tokenizer without a start token leaves the first token unscored."""
    run, window = self.scorer.run, self.scorer.run.cfg.max_seq_len
    out = []
    for r in requests:
      full = run.prompt_ids(r.args[0])
      first = max(len(full) - len(tokenizer_lib.encode(run.tokenizer, r.args[0])), 1)
      pairs = [(full[:lo], full[lo:lo + window]) for lo in range(first, len(full), window)]
      out.append(sum(lp for lp, _ in self.scorer.tokens(pairs)))
    return out

  def generate_until(self, requests) -> list[str]:
    out = []
    for r in requests:
      context, kwargs = r.args[0], dict(r.args[1]) if len(r.args) > 1 else {}
      until = kwargs.get("until", ())
      until = [until] if isinstance(until, str) else list(until)
      temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
      results, _ = saved_run.generate_batch(
          self.scorer.run, [context], int(kwargs.get("max_gen_toks", 256)),
          temperature=temperature, stop=until)
      out.append(results[0]["continuation"])
    return out


def harness_lm(workdir: str, batch_size: int = 8, lm_class: Optional[type] = None):
  """A HarnessLM that is also an lm_eval.api.model.LM (lm_class, for tests: a stand-in base),
  for lm_eval.simple_evaluate(model=harness_lm(WORKDIR), tasks=[...])."""
  if lm_class is None:
    from lm_eval.api.model import LM as lm_class  # noqa: N813 - optional, imported here only
  return type("LlmlabLM", (HarnessLM, lm_class), {})(workdir, batch_size)
