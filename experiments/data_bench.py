"""Benchmark: preparing token shards, and the memory of a run that trains from them.

  python -m experiments.data_bench [--sizes_mb=16,128,1024] [--steps=40]
      [--root=/tmp/llmlab-data-bench] [--out=results/data]

For each size it writes a synthetic corpus of that many megabytes: .jsonl files of 64 MB whose
documents are the standard library's .py files, in a fresh seeded order on every pass, repeated
until the size is reached (real code text, so the tokenizer sees realistic merges; duplicated, so
its loss means nothing). Then, each in its own process so that each peak is its own:

  prepare: trains the tokenizer (on its 64M-character sample, timed on its own) and tokenizes the
           corpus into shards with experiments.prepare_data's code: seconds, tokens/s, peak RSS.
  train:   trains the tiny model (experiments/configs/tiny.py) for --steps steps reading those
           shards, sampling the process's resident memory (VmRSS) every 50 ms: peak RSS, and RSS
           at each step, so "memory does not grow with the corpus or with the steps" is a number.

Writes results.json and rss.png to --out. The measuring is train/studies/data_memory.py.
"""

import json
import os
import subprocess
import sys
import time

from absl import flags

from train import cli, provenance

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_list("sizes_mb", ["16", "128", "1024"], "Corpus sizes in MB.")
  flags.DEFINE_integer("steps", 40, "Training steps per corpus.")
  flags.DEFINE_string("root", "/tmp/llmlab-data-bench", "Scratch folder for corpora and runs.")
  flags.DEFINE_string("out", "results/data", "Where results.json and rss.png go.")
  flags.DEFINE_enum("phase", "all", ["all", "prepare", "train"], "Internal: one child's phase.")
  flags.DEFINE_integer("size_mb", 0, "Internal: the child's corpus size.")


def _config(root: str, size_mb: int):
  """The tiny model's config, reading corpus-<size_mb> and preparing into shards-<size_mb>."""
  from experiments.configs import tiny

  c = tiny.get_config()
  c.data.paths = os.path.join(root, f"corpus-{size_mb}", "*.jsonl")
  c.data.prepared = os.path.join(root, f"shards-{size_mb}")
  return c


def _child(phase: str, size_mb: int) -> dict:
  cmd = [sys.executable, "-m", "experiments.data_bench", f"--phase={phase}", f"--size_mb={size_mb}",
         f"--steps={FLAGS.steps}", f"--root={FLAGS.root}"]
  log = os.path.join(FLAGS.root, f"{phase}-{size_mb}.log")
  with open(log, "w") as err:
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
  if done.returncode:
    raise RuntimeError(f"{phase} of {size_mb} MB failed; see {log}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  cli.setup()
  from train.studies import data_memory

  if FLAGS.phase != "all":
    config, size, root = _config(FLAGS.root, FLAGS.size_mb), FLAGS.size_mb, FLAGS.root
    result = (data_memory.measure_prepare(config, os.path.join(root, f"prepare-{size}"))
              if FLAGS.phase == "prepare" else
              data_memory.measure_training(config, os.path.join(root, f"train-{size}"), FLAGS.steps))
    print(json.dumps(result), flush=True)
    return
  os.makedirs(FLAGS.root, exist_ok=True)
  os.makedirs(FLAGS.out, exist_ok=True)
  sizes = sorted(int(s) for s in FLAGS.sizes_mb)
  results, earlier, old_provenance = [], {}, {}
  path = os.path.join(FLAGS.out, "results.json")
  if os.path.exists(path):  # a rerun reuses the shards: keep the numbers of their preparation
    with open(path) as f:
      old_file = json.load(f)
    old, old_provenance = old_file["results"], old_file.get("provenance", {})
    earlier = {r["size_mb"]: r for r in old if r["prepare"]["written"]}
    results = [r for r in old if r["size_mb"] not in sizes]  # sizes not run now stay as they were
  for size in sizes:
    t0 = time.perf_counter()
    data_memory.write_corpus(os.path.join(FLAGS.root, f"corpus-{size}"), size)
    generated = round(time.perf_counter() - t0, 1)
    prepare = _child("prepare", size)
    if not prepare["written"] and size in earlier:
      prepare, generated = earlier[size]["prepare"], earlier[size]["generate_seconds"]
    entry = {"size_mb": size, "generate_seconds": generated, "prepare": prepare,
             "train": _child("train", size)}
    results = sorted(results + [entry], key=lambda r: r["size_mb"])
    print(json.dumps({k: v for k, v in entry.items()}, default=str)[:400], flush=True)
    out = {"corpus": "synthetic: the Python standard library's .py files as .jsonl documents, "
                     "reshuffled (seeded) and repeated to each size",
           "model": "experiments/configs/tiny.py", "machine": f"{os.cpu_count()} CPU cores",
           "results": results}
    # Sizes kept from an earlier invocation, or a preparation reused: that run's provenance.
    reused = any(r["size_mb"] not in sizes or r["prepare"] is earlier.get(r["size_mb"], {}).get(
        "prepare") for r in results)
    out = provenance.stamp({**({"provenance": old_provenance} if old_provenance else {}), **out},
                           resumed=reused)
    with open(os.path.join(FLAGS.out, "results.json.tmp"), "w") as f:
      json.dump(out, f, indent=2)
    os.replace(os.path.join(FLAGS.out, "results.json.tmp"), os.path.join(FLAGS.out, "results.json"))
    data_memory.plot(results, os.path.join(FLAGS.out, "rss.png"))


if __name__ == "__main__":
  cli.run(main, define_flags)
