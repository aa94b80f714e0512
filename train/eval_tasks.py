"""Downstream tasks on a saved run: multiple choice scored by log-likelihood, generation scored by
exact match, and EleutherAI's lm-evaluation-harness LM interface over the same scoring.

A task file is JSONL, one item a line (docs/evaluation.md):
  {"context": "2+3=", "choices": ["5", "6", "23"], "answer": 0}   multiple choice: right when
      the answer's continuation is the likeliest, log P(choice | context) summed over its tokens
  {"prompt": "2+3=", "target": "5"}                                generation: right when the
      greedy continuation, cut at the first newline, equals the target (whitespace stripped)

Scoring reads the run as decoding does (train/saved_run.py): the context after the run's start
token(s), each choice tokenized on its own after it. A sequence longer than max_seq_len + 1 loses
the oldest context tokens. Every batch is padded to a power-of-two length, so a task compiles the
forward pass a few times at most.

HarnessLM answers lm-evaluation-harness's requests (objects with .args): loglikelihood
(context, continuation), loglikelihood_rolling (text, in windows of max_seq_len tokens) and
generate_until (context, {"until", "max_gen_toks", "temperature"}); harness_lm() makes it a
subclass of the harness's LM, importing lm_eval then and only then (it is not a dependency).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from model import transformer
from train import files
from train import saved_run
from train import step as step_lib
from train.data import tokenizer as tokenizer_lib

GEN_STOP = ("\n",)


class Scorer:
  """log P(continuation | context) of token sequences under a loaded run, in padded batches."""

  def __init__(self, run: saved_run.Loaded, batch_size: int = 8):
    self.run, self.batch_size = run, batch_size
    graphdef = run.graphdef

    def sums(params, inputs_BxT, targets_BxT, mask_BxT):
      logits_BxTxV = transformer.apply(graphdef, params, inputs_BxT)
      logp_BxT = step_lib.token_logps(logits_BxTxV, targets_BxT)
      greedy_BxT = (jnp.argmax(logits_BxTxV, -1) == targets_BxT) | ~mask_BxT
      return jnp.sum(logp_BxT * mask_BxT, -1), jnp.all(greedy_BxT, -1)

    self._sums = jax.jit(sums)

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
    inputs, targets = np.zeros((len(rows), t), np.int32), np.zeros((len(rows), t), np.int32)
    mask = np.zeros((len(rows), t), bool)
    for i, (row, n) in enumerate(zip(rows, n_cont)):
      inputs[i, :len(row) - 1], targets[i, :len(row) - 1] = row[:-1], row[1:]
      mask[i, len(row) - 1 - n:len(row) - 1] = True  # the last n targets: the continuation
    logp_B, greedy_B = self._sums(self.run.params, inputs, targets, mask)
    return [(float(lp), bool(g)) for lp, g in zip(jax.device_get(logp_B), jax.device_get(greedy_B))]

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
  return [lp for lp, _ in scorer.text([(item["context"], c) for c in item["choices"]])]


def evaluate_items(scorer: Scorer, items: Sequence[dict[str, Any]],
                   max_new_tokens: int = 16) -> dict[str, Any]:
  """{"mc_accuracy", "mc_items", "exact_match", "gen_items"} over a task's items (an accuracy is
  None when the task has no item of its kind)."""
  mc = [it for it in items if "choices" in it]
  gen = [it for it in items if "choices" not in it]
  right = sum(int(np.argmax(choice_scores(scorer, it)) == it["answer"]) for it in mc)
  matched = 0
  if gen:
    outs, _ = saved_run.generate_batch(scorer.run, [it["prompt"] for it in gen], max_new_tokens,
                                       temperature=0.0, stop=GEN_STOP,
                                       batch_size=scorer.batch_size)
    matched = sum(o["continuation"].strip() == it["target"].strip() for o, it in zip(outs, gen))
  return {"mc_accuracy": right / len(mc) if mc else None, "mc_items": len(mc),
          "exact_match": matched / len(gen) if gen else None, "gen_items": len(gen)}


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
