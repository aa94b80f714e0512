"""Tokenize a corpus once into memory-mappable token shards (docs/data.md).

  python -m experiments.prepare_data --workdir=runs/NAME [--config=experiments/configs/default.py]
      [--config.data.paths='corpus/*.jsonl.gz' --config.data.prepared=/shared/llmlab/data ...]

Trains (or reuses) the tokenizer in the workdir and writes every source's shards and manifest to
data.prepared (default <workdir>/data); prints one JSON line: the folders, tokens per split, the
time and tokens per second. experiments.train with the same --workdir and data settings then
reads them; a run that finds no shards prepares them itself, through this same code. Run it once,
on one machine, before a multi-host run.
"""

import time

from absl import flags
from ml_collections import config_flags

from train import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", "experiments/configs/default.py", "Experiment config.")
  flags.DEFINE_string("workdir", None, "Directory of the run (its tokenizer lives there).")
  flags.mark_flag_as_required("workdir")


def prepare(config, workdir: str) -> dict:
  """Prepares config.data for workdir; returns what was prepared, with time and tokens/s."""
  from train import config as config_lib
  from train.data import pipeline as data_lib

  config_lib.validate(config)
  start = time.perf_counter()
  prepared = data_lib.prepare(workdir, data_lib.Settings.of(config.data))
  seconds = time.perf_counter() - start
  tokens = sum(m["splits"][s]["tokens"] for m in prepared.manifests for s in ("train", "val"))
  return {"folders": list(prepared.folders), "written": list(prepared.written),
          "seconds": round(seconds, 2), "tokens": tokens,
          "tokens_per_sec": round(tokens / max(seconds, 1e-9)),
          "train_tokens": [m["splits"]["train"]["tokens"] for m in prepared.manifests],
          "val_tokens": [m["splits"]["val"]["tokens"] for m in prepared.manifests],
          "unigram_entropy": [m["unigram_entropy"] for m in prepared.manifests]}


def main(argv):
  del argv
  cli.setup()
  try:
    summary = prepare(FLAGS.config, FLAGS.workdir)
  except ValueError as e:  # DataError, ConfigError
    cli.fail(e)
  print(cli.format_summary(summary), flush=True)


if __name__ == "__main__":
  cli.run(main, define_flags)
