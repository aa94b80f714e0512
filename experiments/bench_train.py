"""Benchmark: train-step model FLOP/s against the machine's matmul peak, beside a plain peer step.

  python -m experiments.bench_train [--steps=5] [--variant=both] [--out=results/bench_train]
      [--profile_steps=2:2]

In one process: the best matmul rate XLA reaches here (float32 on a CPU, which has no published
figure; bfloat16 on a GPU or TPU, also against the chip's published dense peak), llmlab's train
step, and with --variant=both the peer step of train/studies/peer_model.py (a plain Flax linen
decoder of the same width, depth, heads, d_ff and vocabulary with AdamW). The two steps are timed
alternately, step for step, so that a busy machine slows both alike and their ratio holds.

Each step's model FLOPs are its own architecture's (model.config.flops_per_token for llmlab's
SwiGLU blocks, peer.flops_per_token for the GELU MLP). Writes results.json: per variant the median
step time, tokens/s, model FLOP/s and its ratio to the measured peak, and llmlab / peer.
--profile_steps=A:B traces timed rounds A..B (both variants) into <out>/profile; those rounds are
left out of the medians (the profiler slows them). The measuring is train/studies/train_speed.py.
"""

from __future__ import annotations

import json
import os

from absl import flags

from train import cli, provenance

FLAGS = flags.FLAGS
VARIANTS = ("llmlab", "peer", "both")


def define_flags() -> None:
  """The flags of this script (cli.run defines them before parsing)."""
  flags.DEFINE_integer("steps", 5, "Timed steps per variant (after one compile-and-warm-up step).")
  flags.DEFINE_integer("batch_size", 8, "Sequences per step.")
  flags.DEFINE_integer("seq_len", 512, "Tokens per sequence.")
  flags.DEFINE_integer("d_model", 512, "Model width.")
  flags.DEFINE_integer("n_layers", 8, "Layers.")
  flags.DEFINE_integer("n_heads", 8, "Attention heads (llmlab: as many key/value heads).")
  flags.DEFINE_integer("d_ff", 0, "Feed-forward width; 0: 4 x d_model.")
  flags.DEFINE_integer("vocab_size", 4096, "Vocabulary size.")
  flags.DEFINE_enum("variant", "both", VARIANTS, "llmlab's step, the peer's, or both alternating.")
  flags.DEFINE_string("attention_impl", "auto",
                      "llmlab's model.attention_impl (auto: flash on CPU).")
  flags.DEFINE_bool("scan_layers", False, "llmlab's model.scan_layers: on a CPU the unscanned "
                    "layers are faster (XLA copies the scan's stacked slices; docs/training.md).")
  flags.DEFINE_string("out", "results/bench_train", "Output directory for results.json.")
  cli.define_profile_steps_flag()


def main(argv):
  del argv
  cli.setup()
  import jax

  from train.studies.train_speed import Dims, measure

  dims = Dims(FLAGS.batch_size, FLAGS.seq_len, FLAGS.d_model, FLAGS.n_layers, FLAGS.n_heads,
              FLAGS.d_ff or 4 * FLAGS.d_model, FLAGS.vocab_size)
  variants = ("llmlab", "peer") if FLAGS.variant == "both" else (FLAGS.variant,)
  try:
    result = measure(dims, variants, FLAGS.steps, on_cpu=jax.devices()[0].platform == "cpu",
                     profile=cli.profile_steps(), logdir=os.path.join(FLAGS.out, "profile"),
                     attention_impl=FLAGS.attention_impl, scan_layers=FLAGS.scan_layers)
  except ValueError as e:
    cli.fail(e)
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, "results.json"), "w") as f:
    json.dump(provenance.stamp(result), f, indent=2)
  print(json.dumps({k: v for k, v in result.items() if k != "dims"}, indent=2, default=str))


if __name__ == "__main__":
  cli.run(main, define_flags)
