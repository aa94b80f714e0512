"""Decoding measured on trained runs: KV cache against none, MHA/GQA/MQA, the roofline of batch-1
decoding, a verification pass's cost, and speculative decoding against its theory.

The sections of experiments.decode_bench, each a function of the runs' workdirs and the counts it
needs, returning the dict that goes into results.json. Every number is measured in this process;
timings are the best of `repeats` runs of an already compiled function.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax
import numpy as np

from model import generation, kv_cache, sampling, speculative, transformer
from train.data import tokenizer as tokenizer_lib
from train.saved_run import load_run
from train.studies import decode_speed
from train.studies.bench_timing import best_time
from train.studies.roofline import measure_bandwidth, param_bytes

# Short Python prompts: the models were trained on the standard library.
PROMPTS = (
    "import os\nimport sys\n\n\ndef main(argv):\n",
    "class Parser:\n    \"\"\"A simple parser.\"\"\"\n\n    def __init__(self, text):\n",
    "def read_file(path, encoding='utf-8'):\n    with open(path",
    "    for i, item in enumerate(items):\n        if item is None:\n",
)


def encode_prompts(tok, prompts=PROMPTS) -> list[list[int]]:
  """Each prompt's ids, started as generate starts a prompt: after end-of-text natively, as its
  tokenizer does when imported."""
  start = tokenizer_lib.start_ids(tok)
  return [start + tokenizer_lib.encode(tok, p) for p in prompts]


def cache_speedup(target: str, new_tokens: int, repeats: int) -> dict:
  """Section cache: tokens/s of greedy batch-1 generation with the KV cache and without it."""
  cfg, graphdef, params, tok = load_run(target)
  prompt = encode_prompts(tok)[0]
  n = new_tokens
  cached, cached_s = decode_speed.generate_timed(cfg, graphdef, params, prompt, n, repeats)
  uncached, uncached_s = decode_speed.generate_uncached(graphdef, params, prompt, n, repeats)
  return {
      "model": target, "prompt_tokens": len(prompt), "new_tokens": n,
      "cached_tokens_per_s": n / cached_s, "uncached_tokens_per_s": n / uncached_s,
      "speedup": uncached_s / cached_s, "same_tokens": cached == uncached,
      "note": "greedy, batch 1, best of --repeats runs each"}


def heads_speed(target: str, contexts: list[int], steps: int, batches: list[int],
                repeats: int) -> dict:
  """Section heads: MHA, GQA and MQA at the target's shape, randomly initialised, with the cache
  filled with random keys/values: cache bytes and decode tokens/s per context and batch."""
  base, _, _, _ = load_run(target)
  rows = []
  for name, kv in (("MHA", base.n_heads), ("GQA", base.n_kv_heads), ("MQA", 1)):
    for context in contexts:
      cfg = dataclasses.replace(base, n_kv_heads=kv, max_seq_len=max(base.max_seq_len, context + 128))
      graphdef, params = transformer.create(cfg, jax.random.key(0))  # unstacked, like load_run
      for batch in batches:
        sec, cache_bytes = decode_speed.step_seconds(cfg, graphdef, params, batch, context, steps,
                                                     repeats)
        rows.append({
            "variant": name, "n_kv_heads": kv, "context": context, "batch": batch,
            "cache_bytes_per_sequence": kv_cache.bytes_per_sequence(cfg, context),
            "cache_bytes_allocated": cache_bytes, "weight_bytes": param_bytes(params),
            "step_seconds": sec, "tokens_per_s": batch / sec})
        print(json.dumps(rows[-1]), flush=True)
  return {"rows": rows, "note": "random weights and random cache contents"}


def trained_roofline(workdirs: list[str], new_tokens: int, repeats: int) -> dict:
  """Section roofline: the fraction of the measured bandwidth that batch-1 decoding reaches, for
  each of workdirs (target, draft) that exists."""
  out = {"models": []}
  for workdir in workdirs:
    if not os.path.exists(workdir):
      continue
    cfg, graphdef, params, tok = load_run(workdir)
    prompt = encode_prompts(tok)[0]
    n = new_tokens
    _, t_all = decode_speed.generate_timed(cfg, graphdef, params, prompt, n, repeats)
    _, t_first = decode_speed.generate_timed(cfg, graphdef, params, prompt, 1, repeats)
    step_s = (t_all - t_first) / (n - 1)  # the prefill and first sample cancel out
    slots = len(prompt) + n  # generation.cache_length: every step reads all allocated slots
    weight_b = param_bytes(params)
    cache_b = kv_cache.bytes_per_sequence(cfg, slots)
    per_token = weight_b + cache_b
    out["models"].append({
        "model": workdir, "weight_bytes": weight_b, "cache_bytes_read_per_step": cache_b,
        "bytes_per_token": per_token, "step_seconds": step_s, "tokens_per_s": 1 / step_s,
        "achieved_bytes_per_s": per_token / step_s})
  # Bandwidth twice: one buffer the size of the target's bytes per token (as the decode loop
  # sees it, caches included), one of 1 GiB, past any cache level of this machine.
  sizes = {"like_target": out["models"][0]["bytes_per_token"] if out["models"] else 1 << 27,
           "1GiB": 1 << 30}
  out["bandwidth"] = {k: measure_bandwidth(int(v), 7) for k, v in sizes.items()}
  for m in out["models"]:
    for k, bw in out["bandwidth"].items():
      m[f"fraction_of_copy_bw_{k}"] = m["achieved_bytes_per_s"] / bw["copy_bytes_per_s"]
      m[f"fraction_of_matvec_bw_{k}"] = m["achieved_bytes_per_s"] / bw["matvec_read_bytes_per_s"]
  return out


def verify_costs(target: str, repeats: int, ynn_dots: bool, previous: dict) -> dict:
  """Section verify: the target's cached pass over t = 1..9 tokens against a one-token step,
  under this process's XLA dot setting (ynn_dots). Each run adds its setting's row beside the
  other's (previous: the section's earlier record), so the two are compared as ratios each
  measured within one process."""
  tcfg, tdef, tparams, _ = load_run(target)
  pass_s = {t: decode_speed.pass_seconds(tcfg, tdef, tparams, t, 16, repeats) for t in range(1, 10)}
  setting = "ynn_dots" if ynn_dots else "xla_dots"
  out = dict(previous)  # the caller rewrites its wall_seconds
  out[setting] = {"pass_seconds_by_tokens": {str(t): v for t, v in pass_s.items()},
                  "pass_over_one_token_step": {str(t): v / pass_s[1] for t, v in pass_s.items()},
                  "xla_flags": os.environ.get("XLA_FLAGS", "")}
  return out


def distinct_ngram_fraction(tokens: list[int], n: int = 4) -> float:
  """Distinct n-grams over all n-grams of a token sequence: near 1 for varied text, small for a
  decoder stuck in a loop (whose draft then agrees with it trivially)."""
  grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
  return len(set(grams)) / len(grams) if grams else 1.0


def _time_all(fn: Callable[..., Any], params: tuple, padded: list, keys: list,
              repeats: int) -> tuple[list, float]:
  """The outputs of fn on every padded prompt, and its best times summed over the prompts."""
  outs, total = [], 0.0
  for (pr, ln), k in zip(padded, keys):
    args = (*params, pr, ln, k)
    outs.append(jax.block_until_ready(fn(*args)))  # first call of a shape compiles
    total += best_time(lambda: jax.block_until_ready(fn(*args)), repeats)
  return outs, total


def _gamma_row(temp: float, gamma: int, outs: list, spec_s: float, base_outs: list,
               base_s: float, draft_s: float, pass_s: dict, n_tokens: int) -> dict:
  """One (temperature, gamma) row: measured alpha and tokens per target call against theory,
  speedups measured and predicted from the pass costs. n_tokens: emitted over all prompts."""
  accepted = sum(int(o.accepted_B.sum()) for o in outs)
  judged = sum(int(o.judged_B.sum()) for o in outs)
  rounds = sum(int(o.rounds_B.sum()) for o in outs)
  emitted = sum(int(o.emitted_B.sum()) for o in outs)
  alpha = accepted / judged
  row = {
      "temperature": temp, "gamma": gamma, "alpha": alpha,
      "tokens_per_target_call": emitted / rounds,
      "theory_tokens_per_target_call": speculative.expected_tokens_per_call(alpha, gamma),
      "target_calls": rounds, "seconds": spec_s, "target_alone_seconds": base_s,
      "speedup": base_s / spec_s, "c_draft_over_target_step": draft_s / base_s,
      "tokens_per_s": n_tokens / spec_s, "target_alone_tokens_per_s": n_tokens / base_s}
  if temp == 0:
    row["same_tokens_as_target_greedy"] = all(
        np.array_equal(np.asarray(a.tokens_BxN), np.asarray(b.tokens_BxN))
        for a, b in zip(outs, base_outs))
  row["relative_error_vs_theory"] = (
      row["tokens_per_target_call"] / row["theory_tokens_per_target_call"] - 1)
  # The speedup the measured parts predict: tokens per round over the round's cost in
  # one-token target steps (the verification pass, plus gamma draft steps).
  k = pass_s[gamma + 1] / pass_s[1]
  row["verify_pass_over_one_token_step"] = k
  row["predicted_speedup"] = row["tokens_per_target_call"] / (
      k + gamma * row["c_draft_over_target_step"])
  return row


def speculative_sweep(target: str, draft: str, gammas: list[int], temperatures: list[float],
                      new_tokens: int, repeats: int, speculative_repeats: int) -> dict:
  """Section speculative: per temperature and gamma, measured alpha, tokens per target call
  against (1 - alpha^(gamma+1)) / (1 - alpha), and the wall-clock speedup over cached decoding
  of the same prompts with the target alone (eot -1: every run makes exactly new_tokens)."""
  tcfg, tdef, tparams, tok = load_run(target)
  dcfg, ddef, dparams, dtok = load_run(draft)
  if dtok.to_str() != tok.to_str():
    raise ValueError(f"{target} and {draft} have different tokenizers")
  tokenizer_lib.special_id(tok, tokenizer_lib.EOT)  # ValueError for a tokenizer without one
  prompts = encode_prompts(tok)
  n = new_tokens
  keys = [jax.random.split(jax.random.key(i), 1) for i in range(len(prompts))]
  padded = [generation.pad_prompts([p], 0) for p in prompts]
  time_all = lambda fn, *params: _time_all(fn, params, padded, keys, speculative_repeats)
  # What a verification pass costs against a one-token step, on this machine.
  pass_s = {t: decode_speed.pass_seconds(tcfg, tdef, tparams, t, 16, repeats)
            for t in sorted({1} | {g + 1 for g in gammas})}
  print(json.dumps({"target_pass_ms_by_tokens": {t: 1e3 * v for t, v in pass_s.items()}}), flush=True)
  rows, distinct_by_temp = [], {}
  for temp in temperatures:
    sc = sampling.SamplingConfig(temperature=temp)
    # eot = -1: never stop early, so every run makes exactly n tokens and times compare.
    base = generation.make_generate(tcfg, tdef, generation.DecodeSpec(n, -1, sc))
    base_outs, base_s = time_all(base, tparams)
    if temp == 0:  # how varied the target's own greedy text is, and the text itself
      greedy = [np.asarray(o.tokens_BxN)[0].tolist() for o in base_outs]
      target_greedy = {"distinct_4gram_fraction": [distinct_ngram_fraction(g) for g in greedy],
                       "text": [tokenizer_lib.decode(tok, g) for g in greedy]}
    # How varied the target's own text is at this temperature (the check that alpha is
    # not that of a loop): distinct 4-grams of each prompt's continuation, beside every row.
    distinct = [distinct_ngram_fraction(np.asarray(o.tokens_BxN)[0].tolist()) for o in base_outs]
    distinct_by_temp[str(temp)] = distinct
    draft_only = generation.make_generate(dcfg, ddef, generation.DecodeSpec(n, -1, sc))
    _, draft_s = time_all(draft_only, dparams)
    for gamma in gammas:
      fn = speculative.make_generate(
          tcfg, tdef, dcfg, ddef, speculative.SpeculativeSpec(gamma, n, -1, sc))
      outs, spec_s = time_all(fn, tparams, dparams)
      row = _gamma_row(temp, gamma, outs, spec_s, base_outs, base_s, draft_s, pass_s,
                       n * len(prompts))
      row["target_distinct_4gram_fraction"] = float(np.mean(distinct))
      print(json.dumps(row), flush=True)
      rows.append(row)
  return {"rows": rows, "prompts": len(prompts), "new_tokens": n, "batch": 1,
          **({"target_greedy": target_greedy} if 0.0 in temperatures else {}),
          "target_distinct_4gram_fraction_by_temperature": distinct_by_temp,
          "target": target, "draft": draft,
          "target_params": int(sum(x.size for x in jax.tree.leaves(tparams))),
          "draft_params": int(sum(x.size for x in jax.tree.leaves(dparams))),
          "target_pass_seconds_by_tokens": {str(t): v for t, v in pass_s.items()}}
