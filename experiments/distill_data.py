"""Sequence-level distillation data for a speculative draft: the target's own continuations.

  python -m experiments.distill_data --target=runs/decode_target --out=runs/decode_draft/distill.jsonl
  python -m experiments.distill_data --target=runs/decode_target --temperature=1 --seed=3 \
      --out=runs/decode_draft_t1/distill_t1_s3.jsonl

Each line of the output is {"text": prompt + continuation}: the prompt is a random window of the
target's training rows, the continuation the target's greedy decoding of it (--temperature=0, the
default) or its sample at --temperature (with --top_k / --top_p as experiments.generate has
them; the seed chooses prompts and samples) (train/studies/distill.py says why a draft trains on
these).
experiments/configs/decode_draft.py trains the draft on the file.

The file is written to a temporary name and renamed when complete, so a killed run leaves no
file that looks finished; a complete file is not rewritten.
"""

from __future__ import annotations

import os

from absl import flags

from train import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("target", "runs/decode_target", "Target run whose continuations to record.")
  flags.DEFINE_string("out", "runs/decode_draft/distill.jsonl", "The .jsonl file to write.")
  flags.DEFINE_integer("prompts", 128, "Number of continuations.")
  flags.DEFINE_integer("prompt_tokens", 32, "Tokens of corpus text per prompt.")
  flags.DEFINE_integer("new_tokens", 224, "New tokens per continuation.")
  flags.DEFINE_integer("batch", 32, "Continuations decoded together.")
  flags.DEFINE_integer("seed", 0, "Seed of the choice of prompts and of the samples.")
  flags.DEFINE_float("temperature", 0.0, "Sampling temperature of the continuations (0: greedy).")
  flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: off).")
  flags.DEFINE_float("top_p", 1.0, "Nucleus sampling threshold (1: off).")


def main(argv):
  del argv
  cli.setup()
  if os.path.exists(FLAGS.out):
    print(f"{FLAGS.out} exists; delete it to record again", flush=True)
    return
  from model import sampling
  from train.studies import distill

  try:
    sampling_cfg = sampling.SamplingConfig(FLAGS.temperature, FLAGS.top_k, FLAGS.top_p)
    summary = distill.record(FLAGS.target, FLAGS.out, prompts=FLAGS.prompts,
                             prompt_tokens=FLAGS.prompt_tokens, new_tokens=FLAGS.new_tokens,
                             batch=FLAGS.batch, seed=FLAGS.seed, sampling_cfg=sampling_cfg)
  except (ValueError, FileNotFoundError) as e:
    cli.fail(e)
  print(cli.format_summary(summary), flush=True)


if __name__ == "__main__":
  cli.run(main, define_flags)
