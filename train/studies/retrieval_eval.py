"""The lost-in-the-middle study's evaluation: exact match against the position of the gold pair.

For each variant (the query after the pairs, or before and after them), number of pairs k and
gold position, held-out examples of train/studies/kv_retrieval.py are scored (greedy exact match
of every answer token, train/studies/answer_metrics.py): per seed with Wilson intervals, and the
mean over seeds with a bootstrap over the examples paired across seeds. summarise() reads the
U-shape off the curves; Liu et al. 2023's three points are kept for reference.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Callable, Sequence

from train import plots
from train.studies import sweep as sweep_lib


VARIANTS = {"after": False, "both": True}  # name -> query_before


def _eval_key(cfg, run_dir: str) -> str:
  steps = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))
  blob = json.dumps([cfg.eval.to_dict(), os.path.abspath(run_dir), steps], sort_keys=True, default=str)
  return hashlib.sha1(blob.encode()).hexdigest()[:8]


# Liu et al. 2023 (20 documents, GPT-3.5-Turbo): multi-document QA accuracy with the
# answer's document first, in the middle (10th) and last (20th); ../shared/REFERENCES.md.
LIU_ET_AL = {"first": 0.758, "middle": 0.538, "last": 0.632}

# (prompt ids, answer ids) of each example -> whether it is answered exactly, one per example
Scorer = Callable[[list, list], Sequence[bool]]


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
  """Wilson score interval of a binomial proportion (95% at z = 1.96); (0, 1) when n = 0."""
  if n == 0:
    return 0.0, 1.0
  p = correct / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return max(0.0, centre - half), min(1.0, centre + half)


def position_rows(cfg, tok, seq_len: int, score: Scorer) -> list[dict]:
  """Exact match of each held-out example per (variant, k, gold position), by `score`.

  Prompts start at position 0, as training examples start their rows. Each row keeps the
  per-example results ("correct", a string of 0 and 1 in example order: the same examples for
  every seed, so seeds can be paired)."""
  from train.studies import kv_retrieval as kv
  from train.data import tokenizer as tokenizer_lib

  rows = []
  for variant, before in VARIANTS.items():
    for k in cfg.eval.ks:
      for pos in kv.gold_positions(k, cfg.eval.positions):
        examples = kv.eval_examples(cfg.eval.examples, k, pos, cfg.eval.seed, before)
        prompts, answers = [], []
        for e in examples:
          p_ids, a_ids = tokenizer_lib.encode(tok, e.prompt), tokenizer_lib.encode(tok, e.answer)
          if len(p_ids) + len(a_ids) > seq_len:
            raise ValueError(f"eval.ks: k={k} needs {len(p_ids) + len(a_ids)} tokens, more "
                             f"than the model's data.seq_len={seq_len}")
          prompts.append(p_ids)
          answers.append(a_ids)
        correct = [int(c) for c in score(prompts, answers)]
        lo, hi = wilson(sum(correct), len(correct))
        rows.append({
            "variant": variant, "k": k, "position": pos + 1,
            "relative_position": pos / max(k - 1, 1), "n": len(examples),
            "accuracy": sum(correct) / len(correct), "ci95": [lo, hi],
            "correct": "".join(map(str, correct)),
            "k_beyond_training": k > cfg.task.k_max})
  return rows


def evaluate(run_dir: str, cfg, cache_dir: str) -> list[dict]:
  """position_rows of the model in run_dir, greedy exact match (every answer token ranked first
  given the prompt), cached in cache_dir under a key of the settings, the run and its
  checkpoints."""
  import numpy as np

  from train import checkpoint as ckpt_lib
  from train.studies import answer_metrics
  from train.data import tokenizer as tokenizer_lib

  key = _eval_key(cfg, run_dir)
  cache = os.path.join(cache_dir, "eval", f"{key}.json")
  if os.path.exists(cache):
    with open(cache, encoding="utf-8") as f:
      cached = json.load(f)
    if cached.get("key") == key:
      return cached["rows"]
  _, graphdef, params = ckpt_lib.load_params(run_dir)
  with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as f:
    seq_len = json.load(f)["data"]["seq_len"]
  tok = tokenizer_lib.load(run_dir)
  pad_id = tokenizer_lib.special_id(tok, tokenizer_lib.PAD)

  def score(prompts, answers):
    _, acc = answer_metrics.teacher_forced_scores(
        graphdef, params, prompts, answers, pad_id=pad_id, batch_size=cfg.eval.batch_size)
    return np.asarray(acc == 1.0)

  rows = position_rows(cfg, tok, seq_len, score)
  sweep_lib.write_json(cache, {"key": key, "rows": rows})
  return rows


def combine(per_seed: dict, n_resamples: int = 2000, seed: int = 0) -> list[dict]:
  """The mean over seeds of each (variant, k, position), with a 95% interval from a paired
  bootstrap over the held-out examples (each resample draws examples, the same for every seed,
  and averages the seeds' accuracies on them). per_seed: {seed: position_rows}."""
  import numpy as np

  rng = np.random.default_rng(seed)
  seeds = sorted(per_seed)
  out = []
  for i, row in enumerate(per_seed[seeds[0]]):
    hits_SxN = np.array([[c == "1" for c in per_seed[s][i]["correct"]] for s in seeds], float)
    n = hits_SxN.shape[1]
    boot = hits_SxN[:, rng.integers(0, n, size=(n_resamples, n))].mean(axis=(0, 2))
    out.append({
        **{k: v for k, v in row.items() if k not in ("accuracy", "ci95", "correct")},
        "seeds": seeds, "accuracy": float(hits_SxN.mean()),
        "ci95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
        "accuracy_by_seed": [per_seed[s][i]["accuracy"] for s in seeds],
        "ci95_by_seed": [per_seed[s][i]["ci95"] for s in seeds]})
  return out


def any_value_in_context(k: int) -> float:
  """Exact match of answering with a uniformly chosen pair's value, ignoring the key: the gold
  value's share of the k values (drawn with replacement), in expectation."""
  from train.studies import kv_retrieval as kv

  # The gold value plus k - 1 others, each equal to it with probability 1 / len(VALUES).
  return (1 + (k - 1) / len(kv.VALUES)) / k


def summarise(rows: list[dict]) -> dict:
  """Per (variant, k): accuracy at the first, middle and last gold positions, and how far the
  worst middle position falls below the mean of the two ends (> 0: a U-shape's dip)."""
  out = {}
  for variant in VARIANTS:
    for k in sorted({r["k"] for r in rows}):
      by_pos = sorted((r for r in rows if r["variant"] == variant and r["k"] == k),
                      key=lambda r: r["position"])
      if not by_pos:
        continue
      accs = [r["accuracy"] for r in by_pos]
      middle = accs[1:-1] or accs
      out[f"{variant}/k={k}"] = {
          "first": accs[0], "middle_min": min(middle), "last": accs[-1],
          "mean": sum(accs) / len(accs), "dip": (accs[0] + accs[-1]) / 2 - min(middle),
          # A model that answers with one of the values in the context, at random, without
          # matching the key (values are drawn with replacement, so slightly more than 1 / k).
          "any_value_in_context": any_value_in_context(k),
          "curve": [{"position": r["position"], "accuracy": r["accuracy"], "ci95": r["ci95"]}
                    for r in by_pos]}
  return out


def plot(rows: list[dict], out_dir: str, k_max_train: int) -> str:
  """Accuracy against the gold pair's relative position, one line per k (the mean over seeds with
  its 95% band, each seed's own curve thin) and, dotted, the accuracy of answering with any value
  in the context; Liu et al.'s three points for reference."""
  plt = plots.pyplot()

  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
  ks = sorted({r["k"] for r in rows})
  for ax, variant in zip(axes, VARIANTS):
    for i, k in enumerate(ks):
      pts = sorted((r["relative_position"], r["accuracy"], *r["ci95"]) for r in rows
                   if r["variant"] == variant and r["k"] == k)
      x, y, lo, hi = zip(*pts)
      color = plt.cm.viridis(i / max(len(ks) - 1, 1))
      ax.plot(x, y, "o--" if k > k_max_train else "o-", color=color, label=f"k={k}", markersize=4)
      by_seed = sorted((r["relative_position"], r.get("accuracy_by_seed", [])) for r in rows
                       if r["variant"] == variant and r["k"] == k)
      for s in range(len(by_seed[0][1])):  # each seed's own curve, thin
        ax.plot(x, [accs[s] for _, accs in by_seed], "-", color=color, linewidth=0.6, alpha=0.5)
      ax.fill_between(x, lo, hi, color=color, alpha=0.2, linewidth=0)
      ax.axhline(any_value_in_context(k), color=color, linestyle=":", linewidth=0.8)
    ax.plot([0, 0.5, 1], list(LIU_ET_AL.values()), "kx", markersize=8,
            label="Liu et al. (20 docs, GPT-3.5)")
    ax.set_title({"after": "query after the pairs", "both": "query before and after the pairs"}[variant],
                 fontsize=10)
    ax.set_xlabel("position of the gold pair (0 = first, 1 = last)")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("exact match (thick: mean of seeds, 95% CI)")
  axes[0].set_ylim(-0.02, 1.02)
  axes[1].legend(fontsize=8, title_fontsize=7,
                 title=f"dashed: k > {k_max_train} (unseen)\ndotted: any value in the context")
  path = os.path.join(out_dir, "lost_in_middle.png")
  plots.save(fig, path, dpi=110)
  return path
