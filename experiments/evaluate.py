"""Loss and perplexity of a saved workdir on a corpus or on prepared shards, per source.

  python -m experiments.evaluate --workdir=runs/NAME
      [--data.paths=FILES | --data.sources='({"paths": ..., "weight": ...}, ...)' | --shards=DIR]
      [--split=val|all] [--batches=0] [--out=eval.json]

With no data flag the run is scored on its own validation rows; --batches=-1 scores exactly the
rows of its logged eval_loss, 0 (the default) every row once. A workdir imported from Hugging Face
(experiments.convert) is scored the same way. Prints one line per source and the whole, and with
--out writes them as JSON. The work is train/evaluate.py's; docs/evaluation.md explains it.
"""

from __future__ import annotations

import ast
import json
import sys

from absl import flags

from train import cli

FLAGS = flags.FLAGS
DATA_FLAGS = {  # data.* settings the text to score can replace (train/config.py DataSettings)
    "paths": "Files or globs to score, comma-separated",
    "sources": "A mixture to score per source: '({\"paths\": ..., \"weight\": ...}, ...)'",
    "text_field": "Field of a .jsonl line or column of a .parquet file",
    "prepared": "Where the scored text's shards go",
    "seq_len": "Tokens per scored row (at most the model's max_seq_len)",
}


def define_flags() -> None:
  """The flags of this script (cli.run defines them before parsing)."""
  flags.DEFINE_string("workdir", None, "Run to evaluate (its newest checkpoint and tokenizer).")
  flags.mark_flag_as_required("workdir")
  for name, help_text in DATA_FLAGS.items():
    define = flags.DEFINE_integer if name == "seq_len" else flags.DEFINE_string
    define(f"data.{name}", None, help_text + " (default: the run's own data." + name + ")")
    # Listed by --help: train/cli.py lists only the key flags without a dot in their name.
    FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[f"data.{name}"])
  flags.DEFINE_string("shards", "", "Prepared shards to score instead: a source folder, or a "
                      "data.prepared folder of them (experiments.prepare_data).")
  flags.DEFINE_enum("split", "val", ["val", "all"], "Rows of each source: its validation rows, "
                    "or all of them (a corpus kept apart from training).")
  flags.DEFINE_integer("batches", 0, "0: every row once; N: the first N batches; -1: the rows "
                       "of the run's own eval_loss.")
  flags.DEFINE_string("out", "", "Also write the result here as JSON.")


def data_overrides() -> dict:
  """The data.* fields the command line sets; data.sources read as a Python literal."""
  out = {name: FLAGS[f"data.{name}"].value for name in DATA_FLAGS
         if FLAGS[f"data.{name}"].present}
  if "sources" in out:
    try:
      out["sources"] = ast.literal_eval(out["sources"])
    except (ValueError, SyntaxError):
      raise ValueError(f"--data.sources={out['sources']}: expected a Python literal, a tuple of "
                       "{'paths': ..., 'weight': ...}") from None
  return out


def main(argv):
  del argv
  cli.setup()
  from train import evaluate

  try:
    overrides = data_overrides()
    if overrides and FLAGS.shards:
      raise ValueError("give --data.* or --shards, not both")
    r = evaluate.evaluate(FLAGS.workdir, data_overrides=overrides, shards=FLAGS.shards or None,
                          split=FLAGS.split, batches=FLAGS.batches)
  except (FileNotFoundError, ValueError) as e:
    cli.fail(e)
  for s in r["sources"] if len(r["sources"]) > 1 else []:
    print(f"{s['source']}: loss {s['loss']:.4f}, perplexity {s['perplexity']:.2f} "
          f"({s['rows']} rows)", flush=True)
  print(f"{r['workdir']} step {r['step']} ({r['split']}): loss {r['loss']:.4f}, perplexity "
        f"{r['perplexity']:.2f} ({r['rows']} rows)", flush=True)
  if FLAGS.out:
    with open(FLAGS.out, "w", encoding="utf-8") as f:
      json.dump(r, f, indent=2)


if __name__ == "__main__":
  cli.run(main, define_flags)
