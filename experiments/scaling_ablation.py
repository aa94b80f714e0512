"""The scaling study's ablation table: the compute-optimal exponent and tokens per parameter under
successive corrections of the protocol (train/studies/scaling_ablation.py).

  python -m experiments.scaling_ablation --out=results/scaling_ablation \
      --rows="(i) today's protocol=results/scaling/results.jsonl:kaplan:iso" \
      --rows="(ii) + full FLOPs=results/scaling/results.jsonl:full" \
      --rows="(iv) + muP, WSD cooldowns=results/scaling_wsd/results.jsonl:full:iso" [--bootstrap=100]

Each --rows is LABEL=RESULTS_JSONL:ACCOUNTING[:iso][:uptoC] (iso: the file's budget groups are
isoFLOP under that accounting; uptoC, e.g. upto3e12: only the runs of budgets <= C, so that rows
from sweeps of different reach compare over the same budgets). Writes results.json (every row with its intervals, the fit settings and
provenance) and table.md.
"""

from __future__ import annotations

import json
import os

from absl import flags

from train import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_multi_string("rows", [], "LABEL=RESULTS_JSONL:ACCOUNTING[:iso], in table order.")
  flags.DEFINE_string("out", "results/scaling_ablation", "Where results.json and table.md go.")
  flags.DEFINE_integer("bootstrap", 100, "Bootstrap resamples for each interval.")
  flags.DEFINE_enum("grid", "chinchilla", ["chinchilla", "coarse"], "Starts of the full fit.")
  flags.DEFINE_enum("bootstrap_grid", "coarse", ["chinchilla", "coarse"],
                    "Starts of every bootstrap refit (the whole grid, each resample).")


def fit_settings():
  """The fit.* of a sweep config, from the flags (Huber delta, level and seed as the sweeps')."""
  import ml_collections

  return ml_collections.ConfigDict(dict(
      delta=1e-3, grid=FLAGS.grid, max_iter=300, bootstrap=FLAGS.bootstrap, bootstrap_starts=0,
      bootstrap_grid=FLAGS.bootstrap_grid, level=0.9, seed=0))


def parse_row(text: str) -> tuple[str, str, str, bool, float]:
  """(label, results.jsonl, accounting, isoflop, largest budget kept: inf for all)."""
  label, sep, spec = text.rpartition("=")
  path, *parts = spec.split(":")
  options = parts[1:]
  upto = [o for o in options if o.startswith("upto")]
  try:
    max_budget = float(upto[0][len("upto"):]) if upto else float("inf")
  except ValueError:
    max_budget = float("nan")
  if (not sep or not parts or parts[0] not in ("kaplan", "full") or len(upto) > 1
      or any(o != "iso" and not o.startswith("upto") for o in options) or not max_budget > 0):
    raise ValueError(f"--rows={text!r}: expected LABEL=RESULTS_JSONL:kaplan|full[:iso][:uptoC]")
  return label, path, parts[0], "iso" in options, max_budget


def main(argv):
  del argv
  cli.setup()
  from train import provenance
  from train.studies import scaling_ablation as ablation
  from train.studies import sweep as sweep_lib

  try:
    specs = [parse_row(r) for r in FLAGS.rows]
    if not specs:
      raise ValueError("no --rows given")
    table = []
    for label, path, accounting, iso, max_budget in specs:
      if not os.path.exists(path):
        raise ValueError(f"--rows {label!r}: {path} does not exist; run its sweep first")
      with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
      rows = [r for r in rows if r["budget"] <= max_budget]
      table.append({**ablation.row(label, rows, accounting, fit_settings(), isoflop=iso),
                    "source": path, "max_budget": None if max_budget == float("inf") else max_budget})
  except ValueError as e:
    cli.fail(e)
  os.makedirs(FLAGS.out, exist_ok=True)
  sweep_lib.write_json(os.path.join(FLAGS.out, "results.json"), {
      "study": "scaling_ablation", "provenance": provenance.provenance(fit_settings()),
      "chinchilla_a": ablation.CHINCHILLA_A, "rows": table})
  with open(os.path.join(FLAGS.out, "table.md"), "w", encoding="utf-8") as f:
    f.write(ablation.markdown(table) + "\n")
  print(ablation.markdown(table))


if __name__ == "__main__":
  cli.run(main, define_flags)
