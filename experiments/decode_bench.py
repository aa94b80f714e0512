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
               of the same prompts with the target alone; beside each row, the distinct
               4-gram fraction of the target's own text at that temperature (near 1: varied
               text; small: a loop, which a draft predicts trivially).

The measuring is train/studies/decode_runs.py (on the trained runs; its timing primitives are
train/studies/decode_speed.py, the bandwidth train/studies/roofline.py), the plots
train/studies/decode_plots.py.
"""

from __future__ import annotations

import json
import os
import time

from absl import flags

from train import cli, provenance

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script (cli.run defines them before parsing)."""
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


SECTIONS = ("cache", "heads", "roofline", "verify", "speculative")


def run_section(name: str, results: dict) -> dict:
  """One section's record, from the flags (results: what results.json holds so far)."""
  from train.studies import decode_runs

  if name == "cache":
    return decode_runs.cache_speedup(FLAGS.target, FLAGS.new_tokens, FLAGS.repeats)
  if name == "heads":
    return decode_runs.heads_speed(FLAGS.target, list(map(int, FLAGS.contexts)), FLAGS.heads_steps,
                                   list(map(int, FLAGS.heads_batches)), FLAGS.repeats)
  if name == "roofline":
    return decode_runs.trained_roofline([FLAGS.target, FLAGS.draft], FLAGS.new_tokens,
                                        FLAGS.repeats)
  if name == "verify":
    return decode_runs.verify_costs(FLAGS.target, FLAGS.repeats, FLAGS.ynn_dots,
                                    results.get("verify", {}))
  return decode_runs.speculative_sweep(
      FLAGS.target, FLAGS.draft, list(map(int, FLAGS.gammas)),
      list(map(float, FLAGS.temperatures)), FLAGS.new_tokens, FLAGS.repeats,
      FLAGS.speculative_repeats)


def main(argv):
  del argv
  cli.setup()
  if not FLAGS.ynn_dots:  # before jax creates its backend
    cli.prefer_xla_dots()
  import jax

  from train import files
  from train.studies import decode_plots

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
      results[name] = run_section(name, results)
    except (FileNotFoundError, ValueError) as e:
      cli.fail(e)
    results[name]["wall_seconds"] = time.perf_counter() - t0
    results[name]["provenance"] = provenance.provenance()
    # The file's provenance is its oldest section's: no number in it is newer code than that.
    dated = [results[s]["provenance"] for s in SECTIONS if "provenance" in results.get(s, {})]
    if all("provenance" in results.get(s, {}) for s in SECTIONS if s in results):
      results["provenance"] = min(dated, key=lambda p: p["date"])
    files.write_json_atomic(path, results, indent=2)
    decode_plots.plot(results, FLAGS.out)
    print(json.dumps({k: v for k, v in results[name].items() if k != "rows"}, default=str)[:2000],
          flush=True)


if __name__ == "__main__":
  cli.run(main, define_flags)
