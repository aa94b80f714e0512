"""The BPE study's measurements, points and report: compression against vocabulary size, and no
unknown token on any Unicode input.

For every (corpus, vocabulary size) point, train/data/tokenizer.py train_bpe learns a tokenizer
on the training text of train/studies/bpe_corpus.py, and on the held-out text compression()
measures bytes per token and how whitespace-separated words split; check_no_unknown() encodes
random strings from every Unicode plane and from scripts absent from training and requires every
id inside the vocabulary, none unknown, and an exact round trip. experiments/bpe_study.py runs
the points and the report.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import platform
import random
from typing import Sequence

from train import plots, provenance
from train.studies import bpe_corpus
from train.studies import sweep as sweep_lib


def compression(tok, texts: Sequence[str], multi_piece: int) -> dict:
  """Bytes and characters per token of `texts`, and how whitespace-separated words split."""
  n_tokens = sum(len(e.ids) for e in tok.encode_batch(list(texts), add_special_tokens=False))
  n_bytes = sum(len(t.encode("utf-8")) for t in texts)
  n_chars = sum(len(t) for t in texts)
  words = collections.Counter(w for t in texts for w in t.split())
  unique = list(words)
  # A word as it sits inside a text: after a space (GPT-2's pre-split keeps the space with it).
  pieces = [len(e.ids) for e in tok.encode_batch([" " + w for w in unique], add_special_tokens=False)]
  n_words = sum(words.values())
  return {
      "tokens": n_tokens, "bytes": n_bytes, "chars": n_chars, "words": n_words,
      "bytes_per_token": n_bytes / n_tokens, "chars_per_token": n_chars / n_tokens,
      "tokens_per_word": sum(words[w] * p for w, p in zip(unique, pieces)) / n_words,
      "single_token_word_share": sum(words[w] for w, p in zip(unique, pieces) if p == 1) / n_words,
      "multi_piece_share": sum(words[w] for w, p in zip(unique, pieces) if p >= multi_piece) / n_words,
  }


# Scripts the standard library's English text does not use (or barely), as code point ranges.
SCRIPTS = {
    "cjk": [(0x4E00, 0x9FFF), (0x3040, 0x30FF), (0xAC00, 0xD7A3)],  # Han, kana, Hangul
    "devanagari": [(0x0900, 0x097F)],
    "emoji": [(0x1F300, 0x1FAFF)],
    "combining": [(0x0300, 0x036F), (0x20D0, 0x20FF)],
}
EMOJI_GLUE = ("\u200d", "\ufe0f", "\U0001f3fd")  # zero-width joiner, variation selector, skin tone


def unicode_samples(n: int, length: int, seed: int) -> dict[str, list[str]]:
  """n random strings of `length` code points per kind: 'any_plane' draws from all 17 planes
  (surrogates excluded: they are not encodable as UTF-8), including unassigned and private-use
  code points, controls and NUL; each script kind mixes its characters with ASCII letters, spaces
  and (emoji) joiners, and combining marks stack on letters."""
  rng = random.Random(seed)

  def any_code_point() -> str:
    plane = rng.randrange(17)
    while True:
      cp = plane * 0x10000 + rng.randrange(0x10000)
      if not 0xD800 <= cp <= 0xDFFF:
        return chr(cp)

  def from_ranges(ranges) -> str:
    lo, hi = rng.choice(ranges)
    return chr(rng.randint(lo, hi))

  out = {"any_plane": ["".join(any_code_point() for _ in range(length)) for _ in range(n)]}
  for name, ranges in SCRIPTS.items():
    texts = []
    for _ in range(n):
      chars = []
      for _ in range(length):
        r = rng.random()
        if r < 0.6:
          chars.append(from_ranges(ranges))
        elif r < 0.8:
          chars.append(rng.choice(" abcXYZ\n\t.,"))
        elif name == "emoji":
          chars.append(rng.choice(EMOJI_GLUE))
        else:
          chars.append(from_ranges(SCRIPTS["combining"]))  # marks on whatever came before
      texts.append("".join(chars))
    out[name] = texts
  return out


def check_no_unknown(tok, samples: dict[str, list[str]]) -> dict:
  """Encodes every sample: every id inside the vocabulary, none an unknown token, and the decoded
  ids equal to the input. Returns counts per kind; raises AssertionError naming the first failure."""
  from train.data import tokenizer as tokenizer_lib

  vocab = tok.get_vocab_size()
  unk = tok.model.unk_token  # byte-level BPE has none; if one were set, it must never appear
  unk_id = tok.token_to_id(unk) if unk else None
  out = {"vocab_size": vocab, "unk_token": unk}
  for kind, texts in samples.items():
    n_tokens = 0
    for text in texts:
      ids = tokenizer_lib.encode(tok, text)
      n_tokens += len(ids)
      bad = [i for i in ids if not 0 <= i < vocab or i == unk_id or tok.id_to_token(i) is None]
      assert not bad, f"{kind}: {text!r} encodes to ids outside the vocabulary or unknown: {bad}"
      back = tokenizer_lib.decode(tok, ids)
      assert back == text, f"{kind}: decode(encode(x)) != x for x = {text!r}: got {back!r}"
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    out[kind] = {"strings": len(texts), "round_trips": len(texts), "tokens": n_tokens,
                 "bytes_per_token": n_bytes / max(n_tokens, 1)}
  return out


def make_points(cfg) -> list[sweep_lib.Point]:
  """One point per (corpus, vocabulary size), named after them and a hash of what they read."""
  points = []
  for kind in cfg.corpora:
    for vocab in cfg.vocab_sizes:
      settings = [kind, vocab, cfg.paths, cfg.train_chars, cfg.test_chars, cfg.test_percent,
                  cfg.multi_piece, cfg.seed, cfg.unicode.to_dict()]
      key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:6]
      points.append(sweep_lib.Point(f"{kind}-v{vocab}-{key}", {}, {"corpus": kind, "vocab": vocab}))
  return points


def compute_point(cfg, workdir: str, point: sweep_lib.Point) -> dict:
  import time

  from train.data import tokenizer as tokenizer_lib

  kind, vocab = point.meta["corpus"], point.meta["vocab"]
  split = bpe_corpus.corpus(cfg, kind, workdir)
  start = time.process_time()
  tok = tokenizer_lib.train_bpe(split["train"], max(vocab, tokenizer_lib.min_vocab_size()))
  train_cpu_s = time.process_time() - start
  samples = unicode_samples(cfg.unicode.samples, cfg.unicode.length, cfg.unicode.seed)
  return {"vocab_size": tok.get_vocab_size(), "tokenizer_train_cpu_s": train_cpu_s,
          "train_chars": sum(len(t) for t in split["train"]),
          "test": compression(tok, split["test"], cfg.multi_piece),
          "train": compression(tok, split["train"][:50], cfg.multi_piece),
          "unicode": check_no_unknown(tok, samples)}


def plot(rows: list[dict], out_dir: str) -> str:
  plt = plots.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for i, kind in enumerate(sorted({r["corpus"] for r in rows})):
    pts = sorted((r["vocab"], r["test"]) for r in rows if r["corpus"] == kind)
    x = [p[0] for p in pts]
    color = plt.cm.tab10(i)
    axes[0].plot(x, [p[1]["bytes_per_token"] for p in pts], "o-", color=color, label=kind)
    axes[1].plot(x, [p[1]["multi_piece_share"] for p in pts], "o-", color=color,
                 label=f"{kind}: >= {rows[0]['multi_piece']} tokens")
    axes[1].plot(x, [p[1]["single_token_word_share"] for p in pts], "s:", color=color,
                 label=f"{kind}: 1 token")
  for ax in axes:
    ax.set_xscale("log", base=2)
    ax.set_xlabel("vocabulary size")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
  axes[0].set_ylabel("held-out UTF-8 bytes per token")
  axes[0].set_title("compression", fontsize=10)
  axes[1].set_ylabel("share of word occurrences")
  axes[1].set_title("whitespace-separated words by number of tokens", fontsize=10)
  path = os.path.join(out_dir, "bpe.png")
  plots.save(fig, path, dpi=110)
  return path


def report(cfg, workdir: str, points, out_dir: str) -> dict:
  rows = []
  for record in sweep_lib.collect(workdir, points):
    rows.append({**record["meta"], "multi_piece": cfg.multi_piece, **record})
  os.makedirs(out_dir, exist_ok=True)
  table = {kind: {str(r["vocab"]): {
      "vocab_size_with_specials": r["vocab_size"],
      **{k: round(r["test"][k], 4) for k in ("bytes_per_token", "chars_per_token", "tokens_per_word",
                                            "single_token_word_share", "multi_piece_share")},
      "unicode_round_trips": sum(v["round_trips"] for k, v in r["unicode"].items() if isinstance(v, dict)),
      "tokenizer_train_cpu_s": round(r["tokenizer_train_cpu_s"], 2)}
      for r in rows if r["corpus"] == kind} for kind in cfg.corpora}
  first = rows[0] if rows else None
  summary = {
      "study": "bpe", "points": len(rows),
      # Not sweep.machine_info(): that imports jax, which this study never uses.
      "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                  "processor": platform.processor() or platform.machine()},
      "settings": {"train_chars": cfg.train_chars, "test_chars": cfg.test_chars,
                   "test_percent": cfg.test_percent, "multi_piece": cfg.multi_piece,
                   "paths": cfg.paths or "the standard library", "seed": cfg.seed,
                   "unicode": cfg.unicode.to_dict()},
      "text": {kind: next(({"train_chars": r["train_chars"], "held_out_bytes": r["test"]["bytes"],
                            "held_out_words": r["test"]["words"]}
                               for r in rows if r["corpus"] == kind), None) for kind in cfg.corpora},
      "by_corpus": table,
      "unicode_kinds": sorted(k for k, v in first["unicode"].items() if isinstance(v, dict)) if first else [],
      "unicode_bytes_per_token": {kind: {str(r["vocab"]): {
          k: round(v["bytes_per_token"], 3) for k, v in r["unicode"].items() if isinstance(v, dict)}
          for r in rows if r["corpus"] == kind} for kind in cfg.corpora},
  }
  summary["plot"] = os.path.basename(plot(rows, out_dir)) if rows else None
  sweep_lib.write_json(os.path.join(out_dir, "results.json"), provenance.stamp(summary, cfg))
  return summary

