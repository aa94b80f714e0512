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
The corpora are train/studies/bpe_corpus.py; the measurements, points and report
train/studies/bpe_measures.py.
"""

from __future__ import annotations

import sys

from absl import flags

from train import cli
from train.studies import bpe_measures
from train.studies import sweep as sweep_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script (cli.run defines them before parsing)."""
  sweep_lib.define_records_study_flags("bpe", "Cached corpora and one record per point.", "Where results.json and bpe.png go.")


def main(argv):
  del argv
  summary = sweep_lib.run_records_study(
      FLAGS, make_points=bpe_measures.make_points, compute_point=bpe_measures.compute_point,
      report=bpe_measures.report)
  if summary is None:
    return
  print(cli.format_summary({k: summary[k] for k in ("points", "by_corpus")}),
        file=sys.stderr if FLAGS.launcher == "print" else sys.stdout)  # stdout: commands only


if __name__ == "__main__":
  cli.run(main, define_flags)
