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

Writes results.json and rss.png to --out.
"""

import json
import os
import random
import resource
import shutil
import subprocess
import sys
import threading
import time

from absl import flags

from train import cli

FLAGS = flags.FLAGS
FILE_MB = 64
MB = 1 << 20


def define_flags() -> None:
  flags.DEFINE_list("sizes_mb", ["16", "128", "1024"], "Corpus sizes in MB.")
  flags.DEFINE_integer("steps", 40, "Training steps per corpus.")
  flags.DEFINE_string("root", "/tmp/llmlab-data-bench", "Scratch folder for corpora and runs.")
  flags.DEFINE_string("out", "results/data", "Where results.json and rss.png go.")
  flags.DEFINE_enum("phase", "all", ["all", "prepare", "train"], "Internal: one child's phase.")
  flags.DEFINE_integer("size_mb", 0, "Internal: the child's corpus size.")


def rss_mb() -> dict[str, float]:
  """VmRSS and its parts: RssAnon (the process's own memory) and RssFile (pages of mapped files,
  here mostly the shards' pages that reads touched: the kernel's page cache, clean, dropped under
  memory pressure, shared by every process of the host)."""
  out = {}
  with open("/proc/self/status", encoding="ascii") as f:
    for line in f:
      name = line.split(":")[0]
      if name in ("VmRSS", "RssAnon", "RssFile"):
        out[name] = int(line.split()[1]) / 1024
  return out


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def write_corpus(folder: str, size_mb: int) -> list[str]:
  """folder/part-NNN.jsonl, size_mb MB in all (see the module docstring); kept once complete."""
  from train.data import documents

  done = os.path.join(folder, "COMPLETE")
  if not os.path.exists(done):
    os.makedirs(folder, exist_ok=True)
    files = documents.stdlib_files()
    texts = []
    for path in files:
      with open(path, encoding="utf-8", errors="replace") as f:
        texts.append(f.read())
    rng = random.Random(0)
    written, part, out = 0, 0, None
    while written < size_mb * MB:
      order = list(range(len(texts)))
      rng.shuffle(order)
      for i in order:
        if out is None or out.tell() >= FILE_MB * MB:
          if out is not None:
            out.close()
          out = open(os.path.join(folder, f"part-{part:03d}.jsonl"), "w", encoding="utf-8")
          part += 1
        line = json.dumps({"text": texts[i]}) + "\n"
        out.write(line)
        written += len(line.encode())
        if written >= size_mb * MB:
          break
    out.close()
    with open(done, "w") as f:
      f.write(str(written))
  return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".jsonl"))


def _config(root: str, size_mb: int):
  from experiments.configs import tiny

  c = tiny.get_config()
  c.data.paths = os.path.join(root, f"corpus-{size_mb}", "*.jsonl")
  c.data.prepared = os.path.join(root, f"shards-{size_mb}")
  return c


def phase_prepare(root: str, size_mb: int) -> dict:
  from train.data import pipeline as data_lib

  config = _config(root, size_mb)
  settings = data_lib.Settings.of(config.data)
  workdir = os.path.join(root, f"prepare-{size_mb}")
  t0 = time.perf_counter()
  data_lib.tokenizer_for(workdir, settings)
  t1 = time.perf_counter()
  prepared = data_lib.prepare(workdir, settings)
  t2 = time.perf_counter()
  m = prepared.manifests[0]
  tokens = m["splits"]["train"]["tokens"] + m["splits"]["val"]["tokens"]
  return {"corpus_bytes": sum(f["bytes"] for f in m["files"]), "tokens": tokens,
          "shard_bytes": sum(os.path.getsize(os.path.join(prepared.folders[0], s["file"]))
                             for split in ("train", "val") for s in m["splits"][split]["shards"]),
          "n_shards": sum(len(m["splits"][s]["shards"]) for s in ("train", "val")),
          "tokenizer_seconds": round(t1 - t0, 2), "tokenize_seconds": round(t2 - t1, 2),
          "tokens_per_sec": round(tokens / (t2 - t1)), "written": prepared.written[0],
          "peak_rss_mb": round(peak_rss_mb(), 1)}


def phase_train(root: str, size_mb: int, steps: int) -> dict:
  from train import pretrain
  from train import metrics as metrics_lib

  samples = []  # (time, {VmRSS, RssAnon, RssFile} in MB)
  stop = threading.Event()

  def sample():
    while not stop.is_set():
      samples.append((time.time(), rss_mb()))
      time.sleep(0.05)

  config = _config(root, size_mb)
  config.train.steps = steps
  config.train.eval_every = steps
  config.checkpoint.every_steps = steps
  workdir = os.path.join(root, f"train-{size_mb}")
  shutil.rmtree(workdir, ignore_errors=True)  # a fresh run, not the resumption of a finished one
  thread = threading.Thread(target=sample, daemon=True)
  before = rss_mb()
  thread.start()
  try:
    summary = pretrain.train(config, workdir)
  finally:
    stop.set()
    thread.join()
  records = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))

  def at(t: float, name: str) -> float:
    earlier = [mb[name] for when, mb in samples if when <= t]
    return round(earlier[-1] if earlier else samples[0][1][name], 1)

  out = {"steps": summary["final_step"], "rows_read_per_step": summary["rows_read_per_step"],
         "final_loss": summary["loss"]}
  for name, key in (("VmRSS", "rss"), ("RssAnon", "rss_anon"), ("RssFile", "rss_file")):
    out[f"{key}_before_mb"] = round(before[name], 1)
    out[f"peak_{key}_mb"] = round(max(mb[name] for _, mb in samples), 1)
    out[f"{key}_by_step_mb"] = {r["step"]: at(r["time"], name) for r in records}
  return out


def _child(phase: str, size_mb: int) -> dict:
  cmd = [sys.executable, "-m", "experiments.data_bench", f"--phase={phase}", f"--size_mb={size_mb}",
         f"--steps={FLAGS.steps}", f"--root={FLAGS.root}"]
  log = os.path.join(FLAGS.root, f"{phase}-{size_mb}.log")
  with open(log, "w") as err:
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
  if done.returncode:
    raise RuntimeError(f"{phase} of {size_mb} MB failed; see {log}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def plot(results: list[dict], path: str) -> None:
  from train import plots

  plt = plots.pyplot()
  fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
  corpus = [r["prepare"]["corpus_bytes"] / MB for r in results]
  a.plot(corpus, corpus, "k:", label="corpus size")
  a.plot(corpus, [r["train"]["peak_rss_mb"] for r in results], "o-", label="training: peak RSS")
  a.plot(corpus, [r["train"]["peak_rss_anon_mb"] for r in results], "^-",
         label="training: peak RssAnon (own memory)")
  a.plot(corpus, [r["prepare"]["peak_rss_mb"] for r in results], "s-", label="prepare: peak RSS")
  a.set_xscale("log")
  a.set_yscale("log")
  a.set_xlabel("corpus (MB of .jsonl)")
  a.set_ylabel("MB")
  a.legend()
  for r in results:
    for key, style in (("rss", "-"), ("rss_anon", "--")):
      by_step = r["train"][f"{key}_by_step_mb"]  # keys are strings once read back from JSON
      steps = sorted(int(s) for s in by_step)
      b.plot(steps, [by_step[str(s)] for s in steps], style,
             label=f"{r['size_mb']} MB: {'RSS' if key == 'rss' else 'RssAnon'}")
  b.set_xlabel("step")
  b.set_ylabel("training memory (MB)")
  b.legend()
  plots.save(fig, path, dpi=120)


def main(argv):
  del argv
  cli.setup()
  if FLAGS.phase != "all":
    result = (phase_prepare(FLAGS.root, FLAGS.size_mb) if FLAGS.phase == "prepare"
              else phase_train(FLAGS.root, FLAGS.size_mb, FLAGS.steps))
    print(json.dumps(result), flush=True)
    return
  os.makedirs(FLAGS.root, exist_ok=True)
  os.makedirs(FLAGS.out, exist_ok=True)
  sizes = sorted(int(s) for s in FLAGS.sizes_mb)
  results, earlier = [], {}
  path = os.path.join(FLAGS.out, "results.json")
  if os.path.exists(path):  # a rerun reuses the shards: keep the numbers of their preparation
    with open(path) as f:
      old = json.load(f)["results"]
    earlier = {r["size_mb"]: r for r in old if r["prepare"]["written"]}
    results = [r for r in old if r["size_mb"] not in sizes]  # sizes not run now stay as they were
  for size in sizes:
    t0 = time.perf_counter()
    write_corpus(os.path.join(FLAGS.root, f"corpus-{size}"), size)
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
    with open(os.path.join(FLAGS.out, "results.json.tmp"), "w") as f:
      json.dump(out, f, indent=2)
    os.replace(os.path.join(FLAGS.out, "results.json.tmp"), os.path.join(FLAGS.out, "results.json"))
    plot(results, os.path.join(FLAGS.out, "rss.png"))


if __name__ == "__main__":
  cli.run(main, define_flags)
