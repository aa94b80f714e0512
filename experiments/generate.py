"""Generate a continuation from a trained run, with a KV cache, optionally speculative.

  python -m experiments.generate --workdir=runs/NAME --prompt="def " --max_new_tokens=200
      [--temperature=0.8] [--seed=0] [--top_k=40] [--top_p=0.95]
  python -m experiments.generate --workdir=runs/TARGET --draft_workdir=runs/DRAFT --gamma=4 ...
  python -m experiments.generate --workdir=runs/NAME --prompts_file=prompts.txt [--batch_size=8]
      [--stop="\n\n" --stop=END] [--echo] [--out=generations.jsonl]

Loads the newest checkpoint and the tokenizer of each run and writes the continuation alone to
stdout (so it can be piped), and one line of statistics to stderr: tokens per second
(compilation excluded, measured separately), whether it stopped at end-of-text, and for
speculative decoding the acceptance rate alpha and tokens per target call. Temperature 0 is
greedy. max_new_tokens larger than the model leaves room for is clipped, with a one-line note.

--prompts_file reads one prompt a line (a .jsonl file: {"prompt": ...} a line) and decodes them
--batch_size at a time; each output is cut at its earliest --stop string and, with --echo, follows
its prompt. The outputs go to stdout as JSON lines ({"prompt", "text", "new_tokens", "stopped"}),
or to --out.

The prompt starts as a text starts in the run's training (train/data/tokenizer.py start_ids): after
an end-of-text for llmlab's own runs (documents are joined with it), and for a model imported
from Hugging Face with exactly what its tokenizer adds (its BOS, or nothing), so greedy decoding
gives the tokens transformers' generate gives. The work is train/saved_run.py's.
"""

from __future__ import annotations

import json
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
  flags.DEFINE_string("prompts_file", None, "Prompts to decode in batches: one a line, or .jsonl "
                      "with {\"prompt\": ...} a line (instead of --prompt).")
  flags.DEFINE_integer("batch_size", 8, "Prompts decoded together (--prompts_file).")
  flags.DEFINE_multi_string("stop", [], "Cut an output at the first of these strings (repeatable; "
                            "--prompts_file and --prompt alike).")
  flags.DEFINE_bool("echo", False, "Write each prompt before its output.")
  flags.DEFINE_string("out", "", "Write the --prompts_file outputs here as JSON lines, not stdout.")
  flags.DEFINE_string("draft_workdir", None, "Draft run for speculative decoding (same tokenizer).")
  flags.DEFINE_integer("gamma", 4, "Draft tokens proposed per target call (speculative only).")
  flags.DEFINE_bool("ynn_dots", False, "Let XLA's CPU backend run dots of a few rows through "
                    "YNNPACK, its default in jax 0.10; off, they use XLA's own dot, faster for a "
                    "speculative verification pass here (docs/inference.md).")
  flags.mark_flag_as_required("workdir")


def read_prompts(path: str) -> list[str]:
  """A prompts file's prompts: its non-empty lines, or for .jsonl each line's "prompt"."""
  with open(path, encoding="utf-8") as f:
    lines = [line.rstrip("\n") for line in f]
  if not path.endswith(".jsonl"):
    return [line for line in lines if line.strip()]
  prompts = []
  for i, line in enumerate(lines, 1):
    if line.strip():
      record = json.loads(line)
      if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
        raise ValueError(f"{path}:{i}: expected {{\"prompt\": \"...\"}}")
      prompts.append(record["prompt"])
  return prompts


def generate_file() -> None:
  from train import saved_run

  results, note = saved_run.generate_batch(
      saved_run.Loaded.of(FLAGS.workdir), read_prompts(FLAGS.prompts_file), FLAGS.max_new_tokens,
      temperature=FLAGS.temperature, seed=FLAGS.seed, top_k=FLAGS.top_k, top_p=FLAGS.top_p,
      stop=FLAGS.stop, batch_size=FLAGS.batch_size, echo=FLAGS.echo)
  if note:
    print(note, file=sys.stderr, flush=True)
  lines = [json.dumps({k: r[k] for k in ("prompt", "text", "new_tokens", "stopped")}) + "\n"
           for r in results]
  if FLAGS.out:
    with open(FLAGS.out, "w", encoding="utf-8") as f:
      f.writelines(lines)
  else:
    sys.stdout.writelines(lines)


def generate_one() -> None:
  from train import saved_run

  r = saved_run.generate(
      FLAGS.workdir, FLAGS.prompt, FLAGS.max_new_tokens, temperature=FLAGS.temperature,
      seed=FLAGS.seed, top_k=FLAGS.top_k, top_p=FLAGS.top_p,
      draft_workdir=FLAGS.draft_workdir, gamma=FLAGS.gamma)
  if r["note"]:
    print(r["note"], file=sys.stderr, flush=True)
  continuation, _ = saved_run.cut_at_stop(r["continuation"], FLAGS.stop)
  print((FLAGS.prompt if FLAGS.echo else "") + continuation, flush=True)
  line = (f"{r['new_tokens']} tokens in {r['seconds']:.2f} s: {r['tokens_per_second']:.1f} tokens/s "
          f"(compiled in {r['compile_seconds']:.1f} s, not counted)"
          f"{', stopped at end-of-text' if r['ended_with_eot'] else ''}")
  if "alpha" in r:
    line += (f"; speculative gamma={r['gamma']}: alpha={r['alpha']:.3f}, "
             f"{r['tokens_per_target_call']:.2f} tokens per target call "
             f"({r['target_calls']} target calls)")
  print(line, file=sys.stderr, flush=True)


def main(argv):
  del argv
  cli.setup()
  if not FLAGS.ynn_dots:  # before jax creates its backend
    cli.prefer_xla_dots()
  try:
    if FLAGS.prompts_file:
      if FLAGS.draft_workdir:
        raise ValueError("--prompts_file decodes without a draft; drop --draft_workdir")
      generate_file()
    else:
      generate_one()
  except (FileNotFoundError, ValueError) as e:
    cli.fail(e)


if __name__ == "__main__":
  cli.run(main, define_flags)
