"""The BPE study (experiments/bpe_study.py): byte-level BPE of 256 to 32K tokens trained on code and
on prose from the standard library, measured on held-out files (~5 minutes on 2 busy CPU cores).

  python -m experiments.bpe_study [--config=experiments/configs/bpe.py] [--out=results/bpe]

`--config=experiments/configs/bpe.py:tiny` is a seconds-long version for tests.
"""

import ml_collections


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.study = "bpe"
  # 256 is the bytes alone: llmlab's tokenizer also holds 2 special tokens, so it has 258 entries
  # and no merge (train/data/tokenizer.py min_vocab_size).
  c.vocab_sizes = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
  c.corpora = ("code", "prose")  # whole standard-library files; their docstrings and comments
  c.paths = ""  # data.paths syntax for the source files; empty = the standard library
  c.train_chars = 4_000_000  # cap on each corpus's tokenizer-training text
  c.test_chars = 1_000_000  # cap on each corpus's held-out text
  c.test_percent = 10  # share of files (by a hash of the path) held out
  c.multi_piece = 3  # a word "splits into many pieces" at this many tokens or more
  c.seed = 0

  c.unicode = ml_collections.ConfigDict()
  c.unicode.samples = 200  # random strings per kind (see train/studies/bpe_measures.py unicode_samples)
  c.unicode.length = 40  # code points per string
  c.unicode.seed = 1

  c.launch = ml_collections.ConfigDict()
  c.launch.job_name = "llmlab-bpe"
  c.launch.slurm_options = ("--cpus-per-task=2", "--time=00:30:00")

  if preset == "tiny":
    c.vocab_sizes = (256, 512)
    c.train_chars = 30_000
    c.test_chars = 10_000
    c.test_percent = 30
    c.unicode.samples = 10
  elif preset:
    raise ValueError(f"unknown preset {preset!r}; allowed: tiny")
  return c
