"""Preparing token shards, and the memory of a run that trains from them.

The measurements of experiments.data_bench: a synthetic corpus of real code text (the standard
library's .py files, reshuffled and repeated to a size; duplicated, so its loss means nothing),
its preparation into shards timed, and a training run's resident memory sampled every 50 ms, so
"memory does not grow with the corpus or with the steps" is a number.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import threading
import time

from train import metrics as metrics_lib
from train import plots
from train.data import documents
from train.data import pipeline as data_lib

FILE_MB = 64
MB = 1 << 20


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
  """This process's peak resident memory in MB."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def write_corpus(folder: str, size_mb: int) -> list[str]:
  """folder/part-NNN.jsonl, size_mb MB in all: the standard library's .py files as documents, in
  a fresh seeded order on every pass, repeated until the size is reached; kept once complete."""
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


def measure_prepare(config, workdir: str) -> dict:
  """Trains config's tokenizer (timed on its own) and tokenizes its corpus into shards in
  workdir: bytes, tokens, shards, seconds, tokens/s, this process's peak RSS."""
  settings = data_lib.Settings.of(config.data)
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


def measure_training(config, workdir: str, steps: int) -> dict:
  """Trains config for `steps` steps in a fresh workdir, sampling VmRSS, RssAnon and RssFile
  every 50 ms: each before training, at its peak, and at every step."""
  # Imported here, not above: the prepare phase's child process imports this module too, and its
  # peak RSS must not count the training stack (optax, flax, orbax) it never uses.
  from train import pretrain

  samples = []  # (time, {VmRSS, RssAnon, RssFile} in MB)
  stop = threading.Event()

  def sample():
    while not stop.is_set():
      samples.append((time.time(), rss_mb()))
      time.sleep(0.05)

  config.train.steps = steps
  config.train.eval_every = steps
  config.checkpoint.every_steps = steps
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


def plot(results: list[dict], path: str) -> None:
  """Peak memory against corpus size (training and preparing), and training's RSS by step."""
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
