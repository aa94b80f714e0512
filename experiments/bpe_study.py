"""Byte-level BPE: compression against vocabulary size, on code and on prose, and no unknown token.

  python -m experiments.bpe_study [--config=experiments/configs/bpe.py] [--out=results/bpe]
      [--workdir=runs/bpe] [--launcher=local|print|slurm] [--point=NAME]

Two corpora from the standard library's .py files (no download), split by a hash of each file's
path into training and held-out files, each capped at config.train_chars / test_chars characters:
  code   the files as they are (the default corpus of train/data/pipeline.py)
  prose  their docstrings and comments only, separated from the code with `ast` and `tokenize`
For every (corpus, vocabulary size) point, llmlab's own train/data/tokenizer.py train_bpe learns a
tokenizer on the training text, and on the held-out text we measure:
  bytes_per_token   UTF-8 bytes / tokens (1.0 for the 256 bytes alone: no merges)
  tokens_per_word   mean tokens of a whitespace-separated word, encoded with the space before it
  multi_piece_share share of word occurrences that take config.multi_piece or more tokens
and the claim that byte-level BPE has no out-of-vocabulary input: strings of random code points
from every plane, and of scripts absent from training (CJK, Devanagari, emoji with joiners and
modifiers, combining marks), must encode to ids inside the vocabulary, none of them an unknown
token, and decode back to exactly themselves. A failure stops the study with the string.

Each point's record is cached in WORKDIR/points/NAME/result.json (NAME ends in a hash of the
settings it depends on), so a rerun skips finished points; the corpora are cached as JSONL under
WORKDIR/data. --launcher=print prints one command per pending point, slurm writes a job array
(train/studies/sweep.py); run the same command again to collect results.json and bpe.png into --out.
"""

from __future__ import annotations

import ast
import collections
import glob
import hashlib
import io
import json
import os
import platform
import random
import sys
import sysconfig
import tokenize as py_tokenize
from typing import Iterable, Iterator, Sequence

from absl import flags

from train import cli
from train.studies import sweep as sweep_lib
from train import files, plots

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script. Defined on demand, not at import, so tests and other scripts can
  import its functions beside other experiment scripts (absl refuses a flag defined twice)."""
  sweep_lib.define_records_study_flags("bpe", "Cached corpora and one record per point.", "Where results.json and bpe.png go.")


# ---- corpora -------------------------------------------------------------------------------


def source_files(paths: str, seed: int) -> list[str]:
  """The .py files (the standard library's when paths is empty: the files of train/data/pipeline.py
  stdlib_files, listed here so that this study does not import grain), in a seeded order: a cap
  then takes files from every package, not the alphabetically first ones."""
  if paths:
    out = sorted({f for p in paths.split(",") if p.strip()
                  for f in glob.glob(os.path.expanduser(p.strip()), recursive=True)
                  if f.endswith(".py") and os.path.isfile(f)})
    if not out:
      raise ValueError(f"config.paths={paths!r} matches no .py file")
  else:
    out = []
    for dirpath, dirnames, filenames in os.walk(sysconfig.get_paths()["stdlib"]):
      dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "__pycache__"))
      out.extend(os.path.join(dirpath, f) for f in filenames if f.endswith(".py"))
    out.sort()
  random.Random(f"files:{seed}").shuffle(out)
  return out


def is_held_out(path: str, percent: int) -> bool:
  """Held out by a hash of the file's path below the standard library's root: the same files on
  every run and every machine with that library."""
  root = sysconfig.get_paths()["stdlib"]
  key = os.path.relpath(path, root) if path.startswith(root) else path
  return int(hashlib.sha1(key.encode()).hexdigest(), 16) % 100 < percent


def prose_of(source: str) -> str:
  """The docstrings (module, class, function; indentation cleaned) and the comments (without
  '#') of a Python source, in source order, one paragraph each; "" when it does not parse."""
  try:
    tree = ast.parse(source)
    comments = [(tok.start[0], tok.string.lstrip("#").strip())
                for tok in py_tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == py_tokenize.COMMENT]
  except (SyntaxError, ValueError, py_tokenize.TokenError, IndentationError):
    return ""
  docs = []
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      doc = ast.get_docstring(node, clean=True)
      if doc:
        docs.append((node.body[0].lineno, doc))
  # Consecutive comment lines are one paragraph; a docstring is one.
  parts, last_line = [], -2
  for line, text in sorted(docs + [(line, ("#", text)) for line, text in comments],
                           key=lambda x: x[0]):
    if isinstance(text, tuple):
      if not text[1]:
        continue
      if parts and last_line == line - 1 and parts[-1][0] == "#":
        parts[-1] = ("#", parts[-1][1] + " " + text[1])
      else:
        parts.append(("#", text[1]))
    else:
      parts.append(("doc", text))
    last_line = line
  return "\n\n".join(p[1] for p in parts)


def split_corpus(sources: Iterable[tuple[str, str]], kind: str, train_chars: int, test_chars: int,
                 test_percent: int) -> dict[str, list[str]]:
  """{'train': texts, 'test': texts} from (path, source) pairs, each split filled up to its cap
  (the last text cut), files held out by is_held_out. kind: 'code' or 'prose'."""
  out, left = {"train": [], "test": []}, {"train": train_chars, "test": test_chars}
  for path, source in sources:
    split = "test" if is_held_out(path, test_percent) else "train"
    if left[split] <= 0:
      if left["train"] <= 0 and left["test"] <= 0:
        break
      continue
    text = source if kind == "code" else prose_of(source)
    if not text.strip():
      continue
    text = text[:left[split]]
    out[split].append(text)
    left[split] -= len(text)
  if not out["train"] or not out["test"]:
    raise ValueError(f"the {kind} corpus has an empty split: raise the caps or test_percent")
  return out


def _read(paths: Sequence[str]) -> Iterator[tuple[str, str]]:
  for path in paths:
    with open(path, encoding="utf-8", errors="replace") as f:
      yield path, f.read()


def corpus(cfg, kind: str, workdir: str) -> dict[str, list[str]]:
  """The capped split of one corpus, cached in WORKDIR/data/KIND-HASH.jsonl."""
  settings = [kind, cfg.paths, cfg.train_chars, cfg.test_chars, cfg.test_percent, cfg.seed]
  key = hashlib.sha1(json.dumps(settings).encode()).hexdigest()[:8]
  path = os.path.join(workdir, "data", f"{kind}-{key}.jsonl")
  if os.path.exists(path):
    split = {"train": [], "test": []}
    for _, row in files.iter_jsonl(path):
      split[row["split"]].append(row["text"])
    return split
  split = split_corpus(_read(source_files(cfg.paths, cfg.seed)), kind, cfg.train_chars,
                       cfg.test_chars, cfg.test_percent)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  files.write_jsonl_atomic(path, ({"split": s, "text": t} for s in ("train", "test") for t in split[s]))
  return split


# ---- measurements --------------------------------------------------------------------------


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


# ---- points, report, plot ------------------------------------------------------------------


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
  split = corpus(cfg, kind, workdir)
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
  sweep_lib.write_json(os.path.join(out_dir, "results.json"), summary)
  return summary


def main(argv):
  del argv
  summary = sweep_lib.run_records_study(
      FLAGS, make_points=make_points, compute_point=compute_point, report=report)
  if summary is None:
    return
  print(cli.format_summary({k: summary[k] for k in ("points", "by_corpus")}),
        file=sys.stderr if FLAGS.launcher == "print" else sys.stdout)  # stdout: commands only


if __name__ == "__main__":
  cli.run(main, define_flags)
