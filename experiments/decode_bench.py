"""Decoding benchmark: KV cache vs none, MHA/GQA/MQA, the bandwidth roofline, speculative decoding.

  python -m experiments.train --workdir=runs/decode_target --config=experiments/configs/decode_target.py
  python -m experiments.distill_data --target=runs/decode_target --out=runs/decode_draft/distill.jsonl
  cp runs/decode_target/tokenizer.json runs/decode_draft/
  python -m experiments.train --workdir=runs/decode_draft --config=experiments/configs/decode_draft.py
  python -m experiments.decode_bench [--sections=cache,heads,roofline,speculative]

Writes results/decode/results.json (each section merged into what is there, so sections can be
run one at a time) and a plot per section. Every number is measured in this process; nothing is
extrapolated. Timings are the best of --repeats runs of an already compiled function.

Sections:
  cache        tokens/s for 256 new tokens (greedy, batch 1) with the KV cache and without it; the
               uncached decoder reruns the forward pass over the whole prefix for every token,
               with the prefix padded up to a multiple of 32 (one compilation per width).
  heads        MHA vs GQA vs MQA at the target's shape, randomly initialised (speed does not
               depend on the weights' values), with the cache filled with random keys/values at
               long context: cache bytes and decode tokens/s.
  roofline     bytes read per decoded token (all weights + the whole allocated cache) over the
               measured step time, against memory bandwidth measured here by large in-place
               updates (x + 1: read and write) and reductions (read only).
  verify       the target's pass over 1..9 tokens against a one-token step, kept per XLA dot
               setting (run once with --ynn_dots and once without to compare them).
  speculative  gamma 1..8: measured alpha, tokens per target call against
               (1 - alpha^(gamma+1)) / (1 - alpha), and wall-clock speedup over cached decoding
               of the same prompts with the target alone.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

from absl import flags

from train import cli
from train import files, plots

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script. Defined on demand, not at import, so tests and other scripts can
  import its functions beside other experiment scripts (absl refuses a flag defined twice)."""
  flags.DEFINE_string("target", "runs/decode_target", "Target run (experiments/configs/decode_target.py).")
  flags.DEFINE_string("draft", "runs/decode_draft", "Draft run (experiments/configs/decode_draft.py).")
  flags.DEFINE_string("out", "results/decode", "Where results.json and the plots go.")
  flags.DEFINE_list("sections", ["cache", "heads", "roofline", "speculative"], "Sections to run.")
  flags.DEFINE_integer("new_tokens", 256, "Tokens generated per measurement.")
  flags.DEFINE_integer("repeats", 3, "Timed runs per measurement; the best is kept.")
  flags.DEFINE_list("contexts", ["512", "4096"], "Context lengths of the heads section.")
  flags.DEFINE_integer("heads_steps", 64, "Decode steps timed per point of the heads section.")
  flags.DEFINE_list("heads_batches", ["1", "8"], "Batch sizes of the heads section.")
  flags.DEFINE_list("gammas", ["1", "2", "3", "4", "5", "6", "7", "8"], "Speculative gammas.")
  flags.DEFINE_list("temperatures", ["0", "1"], "Sampling temperatures of the speculative section.")
  flags.DEFINE_integer("speculative_repeats", 2, "Timed runs per prompt in the speculative section.")
  flags.DEFINE_bool("ynn_dots", False, "Let XLA's CPU backend run dots of a few rows through "
                    "YNNPACK, its default in jax 0.10; off, they use XLA's own dot, faster for a "
                    "speculative verification pass here (docs/inference.md).")


# Short Python prompts: the models were trained on the standard library.
PROMPTS = (
    "import os\nimport sys\n\n\ndef main(argv):\n",
    "class Parser:\n    \"\"\"A simple parser.\"\"\"\n\n    def __init__(self, text):\n",
    "def read_file(path, encoding='utf-8'):\n    with open(path",
    "    for i, item in enumerate(items):\n        if item is None:\n",
)


def best_time(fn: Callable[[], Any], repeats: int) -> float:
  """Seconds of the fastest of `repeats` calls (fn must block until its result is ready)."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times)


def measure_bandwidth(n_bytes: int, repeats: int) -> dict[str, float]:
  """Memory bandwidth in bytes/s on an n_bytes buffer, three ways.

  copy: the faster of numpy's copyto (one thread) and XLA's in-place x + 1 (all threads); both
  read and write n_bytes. matvec_read: XLA's float32 matrix-vector product, reading n_bytes:
  the operation batch-1 decoding is made of.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np

  n = n_bytes // 4
  a = np.ones(n, np.float32)
  b = np.empty_like(a)
  numpy_s = best_time(lambda: np.copyto(b, a), repeats)
  del a, b
  x = jnp.ones((n // 512, 512), jnp.float32)
  v = jnp.ones((512,), jnp.float32)
  matvec = jax.jit(lambda x, v: x @ v)
  jax.block_until_ready(matvec(x, v))
  matvec_s = best_time(lambda: jax.block_until_ready(matvec(x, v)), repeats)
  bump = jax.jit(lambda x: x + 1.0, donate_argnums=0)  # donated: in place, no fresh pages
  holder = [jax.block_until_ready(bump(x))]
  del x

  def step():
    holder[0] = jax.block_until_ready(bump(holder[0]))

  xla_s = best_time(step, repeats)
  moved = 2 * (n // 512) * 512 * 4
  return {"bytes": n_bytes, "numpy_copy_bytes_per_s": 2 * n * 4 / numpy_s,
          "xla_inplace_bytes_per_s": moved / xla_s,
          "copy_bytes_per_s": max(2 * n * 4 / numpy_s, moved / xla_s),
          "matvec_read_bytes_per_s": moved / 2 / matvec_s}


def load(workdir: str):
  """(cfg, graphdef, params, tokenizer) in the decoding layout: one buffer per layer."""
  from experiments.generate import load_run

  return load_run(workdir)


def encode_prompts(tok, prompts=PROMPTS) -> list[list[int]]:
  from train.data import tokenizer as tokenizer_lib

  # Started as generate starts a prompt: after end-of-text natively, as its tokenizer does when
  # imported.
  start = tokenizer_lib.start_ids(tok)
  return [start + tokenizer_lib.encode(tok, p) for p in prompts]


def param_bytes(params) -> int:
  import jax

  return int(sum(x.nbytes for x in jax.tree.leaves(params)))


def generate_timed(cfg, graphdef, params, prompt: list[int], n_new: int, repeats: int):
  """(tokens, best seconds) of greedy cached generation of exactly n_new tokens at batch 1."""
  import jax

  from model import generation, sampling

  spec = generation.DecodeSpec(n_new, eot_id=-1, sampling=sampling.SamplingConfig(temperature=0.0))
  fn = generation.make_generate(cfg, graphdef, spec)
  args = (params, *generation.pad_prompts([prompt], 0), jax.random.split(jax.random.key(0), 1))
  out = jax.block_until_ready(fn(*args))  # compiles
  seconds = best_time(lambda: jax.block_until_ready(fn(*args)), repeats)
  return generation.trim(out)[0], seconds


def generate_uncached(graphdef, params, prompt: list[int], n_new: int,
                      repeats: int) -> tuple[list[int], float]:
  """Greedy decoding without a cache: a full forward pass over the prefix for every token.

  The prefix is padded to a multiple of 32 (causal attention keeps the padding out of the
  logits read), so only a handful of widths are compiled; they are compiled before timing.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np

  from model import transformer

  width = lambda n: -(-n // 32) * 32
  forward = jax.jit(
      lambda p, t, i: jnp.argmax(transformer.apply(graphdef, p, t)[0, i - 1]).astype(jnp.int32))
  total = len(prompt) + n_new
  for w in sorted({width(n) for n in range(len(prompt), total)}):
    forward(params, jnp.zeros((1, w), jnp.int32), 1).block_until_ready()
  buf = np.zeros((1, width(total)), np.int32)

  def run():
    buf[0, :len(prompt)] = prompt
    for n in range(len(prompt), total):
      buf[0, n] = int(forward(params, jnp.asarray(buf[:, :width(n)]), n))

  seconds = best_time(run, repeats)
  return buf[0, len(prompt):total].tolist(), seconds


def section_cache(r: dict) -> dict:
  cfg, graphdef, params, tok = load(FLAGS.target)
  prompt = encode_prompts(tok)[0]
  n = FLAGS.new_tokens
  cached, cached_s = generate_timed(cfg, graphdef, params, prompt, n, FLAGS.repeats)
  uncached, uncached_s = generate_uncached(graphdef, params, prompt, n, FLAGS.repeats)
  return {
      "model": FLAGS.target, "prompt_tokens": len(prompt), "new_tokens": n,
      "cached_tokens_per_s": n / cached_s, "uncached_tokens_per_s": n / uncached_s,
      "speedup": uncached_s / cached_s, "same_tokens": cached == uncached,
      "note": "greedy, batch 1, best of --repeats runs each"}


def make_decode_steps(cfg, graphdef):
  """jit(params, cache, tok_B, pos_B, n) -> tok_B: n greedy decode steps from a given cache."""
  import jax
  import jax.numpy as jnp

  from model import transformer

  def run(params, cache, tok_B, pos_B, n):
    def body(i, carry):
      cache, tok_B = carry
      logits_Bx1xV, cache = transformer.decode(
          graphdef, params, tok_B[:, None], (pos_B + i)[:, None], cache)
      return cache, jnp.argmax(logits_Bx1xV[:, 0], axis=-1).astype(jnp.int32)

    return jax.lax.fori_loop(0, n, body, (cache, tok_B))[1]

  return jax.jit(run)


def step_seconds(cfg, graphdef, params, batch: int, context: int, steps: int,
                 repeats: int) -> tuple[float, int]:
  """(seconds per decode step at `context` filled slots, from (t(1 + steps) - t(1)) / steps,
  bytes of the cache allocated)."""
  import jax
  import jax.numpy as jnp

  from model import kv_cache

  cache = kv_cache.init(cfg, batch, context + steps + 1)
  leaves, treedef = jax.tree.flatten(cache)
  keys = jax.random.split(jax.random.key(0), len(leaves))
  cache = jax.tree.unflatten(
      treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])
  tok_B = jnp.zeros((batch,), jnp.int32)
  pos_B = jnp.full((batch,), context, jnp.int32)
  fn = make_decode_steps(cfg, graphdef)
  run = lambda n: jax.block_until_ready(fn(params, cache, tok_B, pos_B, n))
  run(1)
  t_one = best_time(lambda: run(1), repeats)
  t_many = best_time(lambda: run(1 + steps), repeats)
  return (t_many - t_one) / steps, cache.nbytes


def section_heads(r: dict) -> dict:
  import dataclasses

  import jax

  from model import kv_cache, transformer

  base, _, _, _ = load(FLAGS.target)
  rows = []
  for name, kv in (("MHA", base.n_heads), ("GQA", base.n_kv_heads), ("MQA", 1)):
    for context in map(int, FLAGS.contexts):
      cfg = dataclasses.replace(base, n_kv_heads=kv, max_seq_len=max(base.max_seq_len, context + 128))
      graphdef, params = transformer.create(cfg, jax.random.key(0))  # unstacked, like load()
      for batch in map(int, FLAGS.heads_batches):
        sec, cache_bytes = step_seconds(cfg, graphdef, params, batch, context, FLAGS.heads_steps,
                                        FLAGS.repeats)
        rows.append({
            "variant": name, "n_kv_heads": kv, "context": context, "batch": batch,
            "cache_bytes_per_sequence": kv_cache.bytes_per_sequence(cfg, context),
            "cache_bytes_allocated": cache_bytes, "weight_bytes": param_bytes(params),
            "step_seconds": sec, "tokens_per_s": batch / sec})
        print(json.dumps(rows[-1]), flush=True)
  return {"rows": rows, "note": "random weights and random cache contents"}


def section_roofline(r: dict) -> dict:
  """Fraction of the measured bandwidth that batch-1 decoding reaches, target and draft."""
  from model import kv_cache

  out = {"models": []}
  for workdir in (FLAGS.target, FLAGS.draft):
    if not os.path.exists(workdir):
      continue
    cfg, graphdef, params, tok = load(workdir)
    prompt = encode_prompts(tok)[0]
    n = FLAGS.new_tokens
    _, t_all = generate_timed(cfg, graphdef, params, prompt, n, FLAGS.repeats)
    _, t_first = generate_timed(cfg, graphdef, params, prompt, 1, FLAGS.repeats)
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


def pass_seconds(cfg, graphdef, params, t: int, passes: int, repeats: int) -> float:
  """Seconds of one cached forward pass over t new tokens at batch 1 (a verification of
  gamma = t - 1 draft tokens), from (t(1 + passes) - t(1)) / passes."""
  import jax
  import jax.numpy as jnp

  from model import kv_cache, transformer

  def run(params, cache, n):
    def body(i, carry):
      cache, tok = carry
      pos_1xT = (16 + i * t + jnp.arange(t, dtype=jnp.int32))[None]
      logits_1xTxV, cache = transformer.decode(
          graphdef, params, jnp.broadcast_to(tok, (1, t)), pos_1xT, cache)
      return cache, jnp.argmax(logits_1xTxV[0, -1]).astype(jnp.int32)

    return jax.lax.fori_loop(0, n, body, (cache, jnp.int32(0)))[1]

  fn = jax.jit(run)
  cache = kv_cache.init(cfg, 1, 16 + (passes + 1) * t)
  go = lambda n: jax.block_until_ready(fn(params, cache, n))
  go(1)
  return (best_time(lambda: go(1 + passes), repeats) - best_time(lambda: go(1), repeats)) / passes


def distinct_ngram_fraction(tokens: list[int], n: int = 4) -> float:
  """Distinct n-grams over all n-grams of a token sequence: near 1 for varied text, small for a
  decoder stuck in a loop (whose draft then agrees with it trivially)."""
  grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
  return len(set(grams)) / len(grams) if grams else 1.0


def section_verify(r: dict) -> dict:
  """The target's cached pass over t = 1..9 tokens against a one-token step, under this process's
  XLA dot setting (--ynn_dots). Each run adds its setting's row beside the other's, so the two
  are compared as ratios each measured within one process."""
  tcfg, tdef, tparams, _ = load(FLAGS.target)
  pass_s = {t: pass_seconds(tcfg, tdef, tparams, t, 16, FLAGS.repeats) for t in range(1, 10)}
  setting = "ynn_dots" if FLAGS.ynn_dots else "xla_dots"
  out = dict(r.get("verify", {}))  # main() rewrites its wall_seconds
  out[setting] = {"pass_seconds_by_tokens": {str(t): v for t, v in pass_s.items()},
                  "pass_over_one_token_step": {str(t): v / pass_s[1] for t, v in pass_s.items()},
                  "xla_flags": os.environ.get("XLA_FLAGS", "")}
  return out


def section_speculative(r: dict) -> dict:
  import jax
  import numpy as np

  from model import generation, sampling, speculative
  from train.data import tokenizer as tokenizer_lib

  tcfg, tdef, tparams, tok = load(FLAGS.target)
  dcfg, ddef, dparams, dtok = load(FLAGS.draft)
  if dtok.to_str() != tok.to_str():
    raise ValueError(f"{FLAGS.target} and {FLAGS.draft} have different tokenizers")
  eot = tokenizer_lib.special_id(tok, tokenizer_lib.EOT)
  prompts = encode_prompts(tok)
  n = FLAGS.new_tokens
  keys = [jax.random.split(jax.random.key(i), 1) for i in range(len(prompts))]
  padded = [generation.pad_prompts([p], 0) for p in prompts]

  def time_all(fn, *params):
    """Summed best times over the prompts, and the outputs."""
    outs, total = [], 0.0
    for (pr, ln), k in zip(padded, keys):
      args = (*params, pr, ln, k)
      outs.append(jax.block_until_ready(fn(*args)))  # first call of a shape compiles
      total += best_time(lambda: jax.block_until_ready(fn(*args)), FLAGS.speculative_repeats)
    return outs, total

  # What a verification pass costs against a one-token step, on this machine.
  gammas = list(map(int, FLAGS.gammas))
  pass_s = {t: pass_seconds(tcfg, tdef, tparams, t, 16, FLAGS.repeats)
            for t in sorted({1} | {g + 1 for g in gammas})}
  print(json.dumps({"target_pass_ms_by_tokens": {t: 1e3 * v for t, v in pass_s.items()}}), flush=True)
  rows = []
  for temp in map(float, FLAGS.temperatures):
    sc = sampling.SamplingConfig(temperature=temp)
    # eot = -1: never stop early, so every run makes exactly n tokens and times compare.
    base = generation.make_generate(tcfg, tdef, generation.DecodeSpec(n, -1, sc))
    base_outs, base_s = time_all(base, tparams)
    if temp == 0:  # how varied the target's own greedy text is, and the text itself
      greedy = [np.asarray(o.tokens_BxN)[0].tolist() for o in base_outs]
      target_greedy = {"distinct_4gram_fraction": [distinct_ngram_fraction(g) for g in greedy],
                       "text": [tokenizer_lib.decode(tok, g) for g in greedy]}
    draft_only = generation.make_generate(dcfg, ddef, generation.DecodeSpec(n, -1, sc))
    _, draft_s = time_all(draft_only, dparams)
    for gamma in gammas:
      fn = speculative.make_generate(
          tcfg, tdef, dcfg, ddef, speculative.SpeculativeSpec(gamma, n, -1, sc))
      outs, spec_s = time_all(fn, tparams, dparams)
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
          "tokens_per_s": n * len(prompts) / spec_s,
          "target_alone_tokens_per_s": n * len(prompts) / base_s}
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
      print(json.dumps(row), flush=True)
      rows.append(row)
  return {"rows": rows, "prompts": len(prompts), "new_tokens": n, "batch": 1,
          **({"target_greedy": target_greedy} if 0.0 in map(float, FLAGS.temperatures) else {}),
          "target": FLAGS.target, "draft": FLAGS.draft,
          "target_params": int(sum(x.size for x in jax.tree.leaves(tparams))),
          "draft_params": int(sum(x.size for x in jax.tree.leaves(dparams))),
          "target_pass_seconds_by_tokens": {str(t): v for t, v in pass_s.items()}}


def plot(results: dict, out: str) -> None:
  """One PNG per section present in results."""
  plt = plots.pyplot()

  if "cache" in results:
    c = results["cache"]
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar(["no cache", "KV cache"], [c["uncached_tokens_per_s"], c["cached_tokens_per_s"]])
    ax.set_ylabel("tokens / s")
    ax.set_title(f"{c['new_tokens']} new tokens, batch 1: {c['speedup']:.1f}x")
    plots.save(fig, os.path.join(out, "cache.png"), dpi=120)
  if "heads" in results:
    rows = results["heads"]["rows"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3))
    for ctx in sorted({r["context"] for r in rows}):
      sel = [r for r in rows if r["context"] == ctx and r.get("batch", 1) == 1]
      a1.plot([r["variant"] for r in sel], [r["cache_bytes_per_sequence"] / 2**20 for r in sel],
              "o-", label=f"{ctx}")
      for batch in sorted({r.get("batch", 1) for r in rows}):
        sel = [r for r in rows if r["context"] == ctx and r.get("batch", 1) == batch]
        a2.plot([r["variant"] for r in sel], [r["tokens_per_s"] for r in sel], "o-",
                label=f"context {ctx}, batch {batch}")
    a1.set_ylabel("KV cache MiB / sequence")
    a2.set_ylabel("decode tokens / s")
    a2.set_yscale("log")
    a1.legend(title="context", fontsize=7)
    a2.legend(fontsize=7)
    plots.save(fig, os.path.join(out, "heads.png"), dpi=120)
  if "roofline" in results and results["roofline"]["models"]:
    r = results["roofline"]
    fig, ax = plt.subplots(figsize=(5, 3))
    labels = [os.path.basename(m["model"]) for m in r["models"]]
    ax.bar(labels, [m["achieved_bytes_per_s"] / 1e9 for m in r["models"]], label="decode, achieved")
    for k, bw in r["bandwidth"].items():
      ax.axhline(bw["copy_bytes_per_s"] / 1e9, ls="--", color="k" if k == "1GiB" else "gray",
                 label=f"copy bandwidth ({k})")
    ax.set_ylabel("GB / s")
    ax.legend(fontsize=7)
    plots.save(fig, os.path.join(out, "roofline.png"), dpi=120)
  if "speculative" in results:
    rows = results["speculative"]["rows"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3))
    for temp in sorted({r["temperature"] for r in rows}):
      sel = [r for r in rows if r["temperature"] == temp]
      g = [r["gamma"] for r in sel]
      line, = a1.plot(g, [r["tokens_per_target_call"] for r in sel], "o-", label=f"T={temp:g}")
      a1.plot(g, [r["theory_tokens_per_target_call"] for r in sel], "x--", color=line.get_color(),
              label=f"theory, T={temp:g}")
      line, = a2.plot(g, [r["speedup"] for r in sel], "o-", label=f"measured, T={temp:g}")
      if "predicted_speedup" in sel[0]:
        a2.plot(g, [r["predicted_speedup"] for r in sel], "x--", color=line.get_color(),
                label=f"from pass costs, T={temp:g}")
    a1.set_xlabel("gamma")
    a1.set_ylabel("tokens per target call")
    a2.set_xlabel("gamma")
    a2.set_ylabel("speedup over cached target")
    a2.axhline(1.0, color="gray", lw=0.5)
    a1.legend(fontsize=7)
    a2.legend(fontsize=7)
    plots.save(fig, os.path.join(out, "speculative.png"), dpi=120)


SECTIONS = {"cache": section_cache, "heads": section_heads, "roofline": section_roofline,
            "verify": section_verify, "speculative": section_speculative}


def main(argv):
  del argv
  cli.setup()
  if not FLAGS.ynn_dots:  # before jax creates its backend
    cli.prefer_xla_dots()
  import jax

  unknown = sorted(set(FLAGS.sections) - set(SECTIONS))
  if unknown:
    cli.fail(ValueError(f"--sections: unknown {unknown}; choose from {sorted(SECTIONS)}"))
  for workdir in (FLAGS.target,) + ((FLAGS.draft,) if "speculative" in FLAGS.sections else ()):
    if not os.path.exists(os.path.join(workdir, "config.json")):
      cli.fail(FileNotFoundError(
          f"{workdir} holds no trained run; train it first (see python -m experiments.decode_bench --help)"))
  os.makedirs(FLAGS.out, exist_ok=True)
  path = os.path.join(FLAGS.out, "results.json")
  results = json.load(open(path)) if os.path.exists(path) else {}
  results["machine"] = {"backend": jax.default_backend(), "devices": str(jax.devices()),
                        "cpu_count": os.cpu_count(), "xla_flags": os.environ.get("XLA_FLAGS", "")}
  for name in FLAGS.sections:
    print(f"== {name}", flush=True)
    t0 = time.perf_counter()
    try:
      results[name] = SECTIONS[name](results)
    except (FileNotFoundError, ValueError) as e:
      cli.fail(e)
    results[name]["wall_seconds"] = time.perf_counter() - t0
    files.write_json_atomic(path, results, indent=2)
    plot(results, FLAGS.out)
    print(json.dumps({k: v for k, v in results[name].items() if k != "rows"}, default=str)[:2000],
          flush=True)


if __name__ == "__main__":
  cli.run(main, define_flags)
