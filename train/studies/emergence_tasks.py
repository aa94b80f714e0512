"""The emergence study's corpus, ladder, scoring and report.

The corpus is the standard library's Python files mixed with addition problems
(train/data/arithmetic.py; held-out problems excluded by arithmetic.split), written once per
data setting. Every size of the ladder is a point of a restartable sweep (train/studies/sweep.py).
Each trained size is scored on held-out problems of each digit count with exact match and three
smooth metrics (per-token accuracy, token edit distance, answer log-likelihood;
train/studies/answer_metrics.py), beside the p^L curve that Schaeffer et al. predict exact match
to follow from the per-token accuracy p on an L-token answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import random

from train import files, plots, provenance
from train.studies import sweep as sweep_lib

EVAL_FILE = "eval.json"
EVAL_VERSION = 2  # raised when the scoring changes, so cached scores are recomputed
METRICS = ("exact_match", "token_accuracy", "token_edit_distance", "answer_logprob")


def _stdlib_documents(n_chars: int, seed: int) -> list[str]:
  """Whole standard-library files in a seeded order until n_chars characters are reached."""
  from train.data import pipeline as data_lib

  files = data_lib.stdlib_files()
  random.Random(f"stdlib:{seed}").shuffle(files)
  docs, total = [], 0
  for path in files:
    if total >= n_chars:
      break
    with open(path, encoding="utf-8", errors="replace") as f:
      text = f.read()
    if text.strip():
      docs.append(text[:n_chars - total] if total + len(text) > n_chars else text)
      total += len(docs[-1])
  return docs


def build_corpus(workdir: str, dcfg) -> str:
  """Writes WORKDIR/data/mix-HASH.jsonl once, HASH naming the data settings (the text is a
  deterministic function of them); returns its absolute path."""
  from train.data import arithmetic

  key = hashlib.sha1(json.dumps(dcfg.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:8]
  path = os.path.abspath(os.path.join(workdir, "data", f"mix-{key}.jsonl"))
  if os.path.exists(path):
    return path
  problems = []
  for digits in dcfg.digits:
    drawn = arithmetic.make_problems(dcfg.problems_per_digit, digits, tuple(dcfg.ops), dcfg.seed)
    problems += arithmetic.split(drawn, dcfg.held_out_fraction)[0]
  random.Random(f"mix:{dcfg.seed}").shuffle(problems)
  arith = arithmetic.documents(problems, dcfg.per_document, dcfg.spaced_digits)
  n_arith = sum(len(d) for d in arith)
  code = _stdlib_documents(int(n_arith * dcfg.stdlib_fraction / (1 - dcfg.stdlib_fraction)), dcfg.seed)
  docs = arith + code
  random.Random(f"docs:{dcfg.seed}").shuffle(docs)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  files.write_jsonl_atomic(path, ({"text": text} for text in docs))
  return path


def make_points(cfg, workdir: str) -> tuple[object, list[sweep_lib.Point]]:
  """(base config on the mixed corpus, one point per ladder size)."""
  base = sweep_lib.apply_overrides(cfg.base, {"data.paths": build_corpus(workdir, cfg.data)})
  points = []
  for n_layers, d_model in cfg.models:
    over = sweep_lib.model_overrides(n_layers, d_model, cfg.head_dim, cfg.ffn_mult)
    points.append(sweep_lib.make_point(f"L{n_layers}-D{d_model}", base, over,
                                       {"n_layers": n_layers, "d_model": d_model}))
  return base, points


def eval_problems(cfg) -> dict[int, list]:
  """Held-out problems per digit count, and the solved training problems used as shots."""
  from train.data import arithmetic

  out = {}
  for digits in cfg.data.digits:
    drawn = arithmetic.make_problems(
        max(cfg.eval.problems_per_digit * 10, 1000), digits, tuple(cfg.data.ops), cfg.eval.seed)
    train, test = arithmetic.split(drawn, cfg.data.held_out_fraction)
    unique = list(dict.fromkeys(test))  # 1-digit sums repeat; score each problem once
    out[digits] = (unique[:cfg.eval.problems_per_digit], train[:cfg.eval.shots])
  return out


def _eval_key(cfg) -> str:
  return hashlib.sha1(json.dumps(
      [EVAL_VERSION, cfg.eval.to_dict(), cfg.data.to_dict()], sort_keys=True, default=str).encode()).hexdigest()[:8]


def evaluate_point(workdir: str, cfg) -> dict:
  """Scores of one trained size on every digit count, cached in WORKDIR/eval.json."""
  import numpy as np

  from train.data import arithmetic
  from train import checkpoint as ckpt_lib
  from train.studies import answer_metrics
  from train.data import tokenizer as tokenizer_lib

  path = os.path.join(workdir, EVAL_FILE)
  key = _eval_key(cfg)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      cached = json.load(f)
    if cached.get("key") == key:
      return cached
  _, graphdef, params = ckpt_lib.load_params(workdir)
  tok = tokenizer_lib.load(workdir)
  spaced = cfg.data.spaced_digits
  prompts, answers, digit_of = [], [], []
  for digits, (problems, shots) in eval_problems(cfg).items():
    context = "".join("".join(arithmetic.render(p, spaced)) + "\n" for p in shots)
    for p in problems:
      prompt, answer = arithmetic.render(p, spaced)
      prompts.append(context + prompt)
      answers.append(answer)
      digit_of.append(digits)
  # One call for every digit count: one padded width, so one compilation per model.
  scores = answer_metrics.score_answers(
      graphdef, params, tok, prompts, answers,
      pad_id=tokenizer_lib.special_id(tok, tokenizer_lib.PAD),
      stop_ids=answer_metrics.stop_token_ids(tok), normalise=arithmetic.normalise,
      batch_size=cfg.eval.batch_size)
  digit_of = np.array(digit_of)
  rows = []
  for digits in cfg.data.digits:
    mask = digit_of == digits
    row = {"digits": digits, "n": int(mask.sum())}
    row.update({m: float(np.mean(scores[m][mask])) for m in METRICS + ("answer_tokens",)})
    # Schaeffer et al.: exact match ~ p^L with p the per-token accuracy and L answer tokens.
    row["token_accuracy_pow_L"] = float(
        np.mean(scores["token_accuracy"][mask]) ** np.mean(scores["answer_tokens"][mask]))
    rows.append(row)
  result = {"key": key, "digits": rows}
  sweep_lib.write_json(path, result)
  return result


def collect(root: str, points, cfg) -> list[dict]:
  """One row per (size, digit count) of every trained size, evaluating those not yet scored."""
  rows = []
  for record in sweep_lib.collect(root, points):
    scores = evaluate_point(sweep_lib.point_dir(root, record["name"]), cfg)
    for r in scores["digits"]:
      rows.append({"name": record["name"], **record["meta"], "params": record["params"],
                   "N": record["params_non_embedding"], "flops": record["flops"],
                   "tokens": record["tokens"], "eval_loss": record["eval_loss"], **r})
  return rows


def plot(rows: list[dict], out_dir: str) -> str:
  plt = plots.pyplot()
  from matplotlib.ticker import NullFormatter

  titles = {"exact_match": "exact match (greedy)", "token_accuracy": "per-token accuracy",
            "token_edit_distance": "token edit distance (lower is better)",
            "answer_logprob": "answer log-likelihood (nats)"}
  fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
  digits = sorted({r["digits"] for r in rows})
  for ax, metric in zip(axes.ravel(), METRICS):
    for i, d in enumerate(digits):
      color = plt.cm.tab10(i)
      pts = sorted((r["flops"], r[metric], r["token_accuracy_pow_L"]) for r in rows if r["digits"] == d)
      ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=f"{d}-digit")
      if metric == "exact_match":
        ax.plot([p[0] for p in pts], [p[2] for p in pts], ":", color=color, lw=1.5,
                label=f"{d}-digit: (token acc.)^L")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on a short log axis
    ax.set_xlabel("training FLOPs")
    ax.set_title(titles[metric], fontsize=10)
    ax.grid(alpha=0.3, which="both")
  axes[0, 0].legend(fontsize=7)
  axes[0, 1].legend(fontsize=7)
  fig.suptitle("Held-out addition by model size (one point per size of the ladder)", fontsize=10)
  path = os.path.join(out_dir, "emergence.png")
  plots.save(fig, path, dpi=110)
  return path


def report(root: str, points, cfg, out_dir: str) -> dict:
  rows = collect(root, points, cfg)
  os.makedirs(out_dir, exist_ok=True)
  sweep_lib.write_jsonl(os.path.join(out_dir, "results.jsonl"), rows)
  sizes = sorted({r["name"] for r in rows}, key=lambda n: next(r["flops"] for r in rows if r["name"] == n))
  table = {d: {n: {m: next(round(r[m], 4) for r in rows if r["name"] == n and r["digits"] == d)
                   for m in METRICS} for n in sizes} for d in sorted({r["digits"] for r in rows})}
  summary = {"study": "emergence", "provenance": provenance.provenance(cfg),
             "machine": sweep_lib.machine_info(), "sizes": len(sizes),
             "points": len(points), "by_digits": table,
             "train": {"steps": cfg.base.train.steps, "batch_size": cfg.base.train.batch_size,
                       "seq_len": cfg.base.data.seq_len},
             "wall_s_total": sum(r["wall_s"] for r in sweep_lib.collect(root, points)),
             "cpu_s_total": sum(r["cpu_s"] for r in sweep_lib.collect(root, points))}
  sweep_lib.write_json(os.path.join(out_dir, "results.json"), summary)
  summary["plot"] = plot(rows, out_dir) if rows else None
  return summary

