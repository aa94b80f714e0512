"""Benchmark: the wall time of the tiny path (experiments/configs/tiny.py), end to end.

  python -m experiments.tiny_run [--root=/tmp/llmlab-tiny-run] [--out=results/tiny_run]
      [--note="..."]

Runs, as subprocesses from the repository root: experiments.prepare_data on the tiny config (its
corpus's tokenizing time and validation share), then experiments.train on it in a fresh workdir
with an empty shard folder (the cold, first run), then in a new workdir on the shards that run left
(the warm run), and times `--help` of train, sft, evaluate and generate. Writes results.json: each
run's wall seconds and when its banner and first and last steps were printed, the --help seconds,
the load averages, --note, and provenance. The measuring is
train/studies/tiny_run.py.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

from absl import flags

from train import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script (cli.run defines them before parsing)."""
  flags.DEFINE_string("root", "/tmp/llmlab-tiny-run", "Scratch folder for the runs; removed "
                      "first, so every cache in it is cold.")
  flags.DEFINE_string("out", "results/tiny_run", "Output directory for results.json.")
  flags.DEFINE_string("note", "", "Free text kept in results.json (e.g. what else ran on the machine).")


def main(argv):
  del argv
  cli.setup()
  from train import provenance
  from train.studies import tiny_run

  shutil.rmtree(FLAGS.root, ignore_errors=True)
  result = tiny_run.measure(FLAGS.root, python=sys.executable)
  result["note"] = FLAGS.note
  result["cpu_count"] = os.cpu_count()
  result["provenance"] = provenance.provenance()
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, "results.json"), "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps({k: result[k] for k in ("prepare", "cold", "warm", "help_s")}, indent=2))


if __name__ == "__main__":
  cli.run(main, define_flags)
