"""The BPE study's corpora: the standard library's .py files as code, and as prose.

Files are split into training and held-out files by a hash of their path (is_held_out), so the
same files are held out on every run and machine; each split is capped at a number of
characters. The prose corpus is the docstrings and comments of the same files, separated from
the code with `ast` and `tokenize` (prose_of). experiments/bpe_study.py measures BPE on both;
train/studies/score_scale_training.py trains its models on the code corpus.
"""

from __future__ import annotations

import ast
import glob
import hashlib
import io
import json
import os
import random
import sysconfig
import tokenize as py_tokenize
from typing import Iterable, Iterator, Sequence

from train import files

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


def read_sources(paths: Sequence[str]) -> Iterator[tuple[str, str]]:
  """(path, text) of each file, read lazily (split_corpus stops reading once its caps are met)."""
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
  split = split_corpus(read_sources(source_files(cfg.paths, cfg.seed)), kind, cfg.train_chars,
                       cfg.test_chars, cfg.test_percent)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  files.write_jsonl_atomic(path, ({"split": s, "text": t} for s in ("train", "test") for t in split[s]))
  return split

