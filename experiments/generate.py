"""Generate a continuation from a trained run, with a KV cache, optionally speculative.

  python -m experiments.generate --workdir=runs/NAME --prompt="def " --max_new_tokens=200
      [--temperature=0.8] [--seed=0] [--top_k=40] [--top_p=0.95]
  python -m experiments.generate --workdir=runs/TARGET --draft_workdir=runs/DRAFT --gamma=4 ...

Loads the newest checkpoint and the tokenizer of each run and writes the continuation alone to
stdout (so it can be piped), and one line of statistics to stderr: tokens per second
(compilation excluded, measured separately), whether it stopped at end-of-text, and for
speculative decoding the acceptance rate alpha and tokens per target call. Temperature 0 is
greedy.

The prompt starts as a text starts in the run's training (train/data/tokenizer.py start_ids): after
an end-of-text for llmlab's own runs (documents are joined with it), and for a model imported
from Hugging Face with exactly what its tokenizer adds (its BOS, or nothing), so greedy decoding
gives the tokens transformers' generate gives. The work is train/saved_run.py's.
"""

from __future__ import annotations

import sys

from absl import flags

from train import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script (cli.run defines them before parsing)."""
  flags.DEFINE_string("workdir", None, "Run to generate from (its newest checkpoint).")
  flags.DEFINE_string("prompt", "def ", "Text to continue.")
  flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate at most (stops at end-of-text).")
  flags.DEFINE_float("temperature", 1.0, "Sampling temperature; 0 = greedy.")
  flags.DEFINE_integer("seed", 0, "PRNG seed: the same seed gives the same output.")
  flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0 = off).")
  flags.DEFINE_float("top_p", 1.0, "Sample within the nucleus of this mass (1 = off).")
  flags.DEFINE_string("draft_workdir", None, "Draft run for speculative decoding (same tokenizer).")
  flags.DEFINE_integer("gamma", 4, "Draft tokens proposed per target call (speculative only).")
  flags.DEFINE_bool("ynn_dots", False, "Let XLA's CPU backend run dots of a few rows through "
                    "YNNPACK, its default in jax 0.10; off, they use XLA's own dot, faster for a "
                    "speculative verification pass here (docs/inference.md).")
  flags.mark_flag_as_required("workdir")


def main(argv):
  del argv
  cli.setup()
  if not FLAGS.ynn_dots:  # before jax creates its backend
    cli.prefer_xla_dots()
  from train import saved_run

  try:
    r = saved_run.generate(
        FLAGS.workdir, FLAGS.prompt, FLAGS.max_new_tokens, temperature=FLAGS.temperature,
        seed=FLAGS.seed, top_k=FLAGS.top_k, top_p=FLAGS.top_p,
        draft_workdir=FLAGS.draft_workdir, gamma=FLAGS.gamma)
  except (FileNotFoundError, ValueError) as e:
    cli.fail(e)
  print(r["continuation"], flush=True)
  line = (f"{r['new_tokens']} tokens in {r['seconds']:.2f} s: {r['tokens_per_second']:.1f} tokens/s "
          f"(compiled in {r['compile_seconds']:.1f} s, not counted)"
          f"{', stopped at end-of-text' if r['ended_with_eot'] else ''}")
  if "alpha" in r:
    line += (f"; speculative gamma={r['gamma']}: alpha={r['alpha']:.3f}, "
             f"{r['tokens_per_target_call']:.2f} tokens per target call "
             f"({r['target_calls']} target calls)")
  print(line, file=sys.stderr, flush=True)


if __name__ == "__main__":
  cli.run(main, define_flags)
