"""Tokenize a corpus once into memory-mappable token shards (docs/data.md).

  python -m experiments.prepare_data --workdir=runs/NAME [--config=experiments/configs/default.py]
      [--config.data.paths='corpus/*.jsonl.gz' --config.data.prepared=/shared/llmlab/data ...]

Trains (or reuses) the tokenizer in the workdir and writes every source's shards and manifest to
data.prepared (default <workdir>/data); prints one JSON line: the folders, tokens per split, the
time and tokens per second. experiments.train with the same --workdir and data settings then
reads them; a run that finds no shards prepares them itself, through the same
train/data/pipeline.py prepare(). Run it once, on one machine, before a multi-host run.
"""

from absl import flags
from ml_collections import config_flags

from train import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", "experiments/configs/default.py", "Experiment config.")
  flags.DEFINE_string("workdir", None, "Directory of the run (its tokenizer lives there).")
  flags.mark_flag_as_required("workdir")


def main(argv):
  del argv
  cli.setup()
  from train.data import pipeline

  try:
    summary = pipeline.prepare_config(FLAGS.config, FLAGS.workdir)
  except ValueError as e:  # DataError, ConfigError
    cli.fail(e)
  print(cli.format_summary(summary), flush=True)


if __name__ == "__main__":
  cli.run(main, define_flags)
