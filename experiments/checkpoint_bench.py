"""Benchmark: the step-time cost of a checkpoint, synchronous against asynchronous saves.

  python -m experiments.checkpoint_bench [--rounds=2] [--before=3] [--after=3]
      [--d_model=768 --n_layers=12 --vocab_size=32000 --batch_size=1 --seq_len=128]
      [--out=results/checkpoint_overhead] [--shared_machine]

A ~100M-parameter llmlab model (the defaults) takes plain steps, one step that saves a checkpoint
(train/checkpoint.py, checkpoint.async_save False or True) and the steps after it; sync and async
trials alternate in one process so that other jobs on the machine slow both alike. Writes
results.json: the median plain step, the saving step and the steps after it per mode, the wait at
the end for the write, the checkpoint's bytes, and provenance. The measuring is
train/studies/checkpoint_overhead.py.
"""

from __future__ import annotations

import json
import os
import tempfile

from absl import flags

from train import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script (cli.run defines them before parsing)."""
  flags.DEFINE_integer("rounds", 2, "Trials per mode (sync and async alternate).")
  flags.DEFINE_integer("before", 3, "Plain steps timed before each saving step.")
  flags.DEFINE_integer("after", 3, "Steps timed after each saving step.")
  flags.DEFINE_integer("batch_size", 1, "Sequences per step.")
  flags.DEFINE_integer("seq_len", 128, "Tokens per sequence.")
  flags.DEFINE_integer("d_model", 768, "Model width.")
  flags.DEFINE_integer("n_layers", 12, "Layers.")
  flags.DEFINE_integer("n_heads", 12, "Attention heads.")
  flags.DEFINE_integer("d_ff", 0, "Feed-forward width; 0: 4 x d_model.")
  flags.DEFINE_integer("vocab_size", 32000, "Vocabulary size.")
  flags.DEFINE_string("ckpt_dir", "", "Where the trials' checkpoints are written (and removed); "
                      "empty: a temporary directory.")
  flags.DEFINE_bool("shared_machine", False, "Record that other jobs ran on the machine meanwhile.")
  flags.DEFINE_string("out", "results/checkpoint_overhead", "Output directory for results.json.")


def main(argv):
  del argv
  cli.setup()
  from train import provenance
  from train.studies import checkpoint_overhead, train_speed

  dims = train_speed.Dims(FLAGS.batch_size, FLAGS.seq_len, FLAGS.d_model, FLAGS.n_layers,
                          FLAGS.n_heads, FLAGS.d_ff or 4 * FLAGS.d_model, FLAGS.vocab_size)
  with tempfile.TemporaryDirectory(dir=FLAGS.ckpt_dir or None) as scratch:
    result = checkpoint_overhead.measure(dims, rounds=FLAGS.rounds, before=FLAGS.before,
                                         after=FLAGS.after, directory=scratch)
  result["shared_machine"] = FLAGS.shared_machine
  result["cpu_count"] = os.cpu_count()
  result["provenance"] = provenance.provenance()
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, "results.json"), "w") as f:
    json.dump(result, f, indent=2)
  short = {k: result[k] for k in ("params", "plain_step_s_median", "checkpoint_bytes")}
  for mode in ("sync", "async"):
    short[mode] = {k: v for k, v in result[mode].items() if k != "trials"}
  print(json.dumps(short, indent=2))


if __name__ == "__main__":
  cli.run(main, define_flags)
