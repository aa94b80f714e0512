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
gives the tokens transformers' generate gives.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Optional

from absl import flags

from train import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script. Defined on demand, not at import, so tests and other scripts can
  import its functions beside other experiment scripts (absl refuses a flag defined twice)."""
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


def load_run(workdir: str):
  """(ModelConfig, graphdef, params, tokenizer) of a run, or FileNotFoundError naming it.

  The parameters come in the decoding layout (transformer.unstack_layers: one buffer per layer).
  """
  from model import transformer
  from train import checkpoint
  from train.data import tokenizer as tokenizer_lib

  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"workdir {workdir} does not exist")
  tok = tokenizer_lib.load(workdir)
  cfg, _, params = checkpoint.load_params(workdir)
  cfg, graphdef, params = transformer.unstack_layers(cfg, params)
  return cfg, graphdef, params, tok


def check_fits(cfg, workdir: str, n_prompt: int, max_new_tokens: int) -> None:
  """The prompt and the new tokens must sit at positions the model was built for.

  A speculative round may score up to gamma positions past the last kept token; those tokens are
  cut, so they need no room here (RoPE has no table to run past).
  """
  if n_prompt > cfg.max_seq_len:
    raise ValueError(
        f"the prompt is {n_prompt} tokens (with its start token, if any), longer than "
        f"max_seq_len={cfg.max_seq_len} of {workdir}; shorten --prompt")
  if n_prompt + max_new_tokens > cfg.max_seq_len:
    raise ValueError(
        f"the prompt ({n_prompt} tokens) plus max_new_tokens={max_new_tokens} exceeds "
        f"max_seq_len={cfg.max_seq_len} of {workdir}; use --max_new_tokens<="
        f"{cfg.max_seq_len - n_prompt} or a shorter --prompt")


def run(
    workdir: str,
    prompt: str,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    seed: int = 0,
    top_k: int = 0,
    top_p: float = 1.0,
    draft_workdir: Optional[str] = None,
    gamma: int = 4,
) -> dict[str, Any]:
  """Generates one continuation; returns the text (prompt and continuation), the continuation,
  the prompt's token ids (with its start token), the new ids (with the end-of-text that stopped
  them, if one did) and the statistics that main() prints."""
  import jax

  from model import generation, sampling, speculative
  from train.data import tokenizer as tokenizer_lib

  sc = sampling.SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)
  if max_new_tokens < 1:
    raise ValueError(f"--max_new_tokens must be >= 1, got {max_new_tokens}")
  cfg, graphdef, params, tok = load_run(workdir)
  eot = tokenizer_lib.special_id(tok, tokenizer_lib.EOT)
  ids = tokenizer_lib.start_ids(tok) + tokenizer_lib.encode(tok, prompt)
  if not ids:  # an imported tokenizer that adds no BOS, and an empty prompt
    raise ValueError(f"the prompt encodes to no token and the tokenizer of {workdir} starts a "
                     "text with none; give a non-empty --prompt")
  check_fits(cfg, workdir, len(ids), max_new_tokens)
  prompts_1xT, lengths_1 = generation.pad_prompts([ids], eot)
  keys_1 = jax.random.split(jax.random.key(seed), 1)

  if draft_workdir is None:
    fn = generation.make_generate(cfg, graphdef, generation.DecodeSpec(max_new_tokens, eot, sc))
    args = (params, prompts_1xT, lengths_1, keys_1)
  else:
    if gamma < 1:
      raise ValueError(f"--gamma must be >= 1, got {gamma}")
    dcfg, dgraphdef, dparams, dtok = load_run(draft_workdir)
    if dtok.to_str() != tok.to_str():
      raise ValueError(
          f"the tokenizers of {workdir} and {draft_workdir} differ; speculative decoding needs "
          "one shared tokenizer (copy the target's tokenizer.json into the draft's workdir "
          "before training it)")
    if dcfg.vocab_size != cfg.vocab_size:
      raise ValueError(
          f"model.vocab_size differs: {cfg.vocab_size} in {workdir}, {dcfg.vocab_size} in "
          f"{draft_workdir}")
    check_fits(dcfg, draft_workdir, len(ids), max_new_tokens)
    fn = speculative.make_generate(
        cfg, graphdef, dcfg, dgraphdef, speculative.SpeculativeSpec(gamma, max_new_tokens, eot, sc))
    args = (params, dparams, prompts_1xT, lengths_1, keys_1)

  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  out = jax.block_until_ready(compiled(*args))
  seconds = time.perf_counter() - t0
  new_ids = generation.trim(generation.Generated(out.tokens_BxN, out.lengths_B))[0]
  ended = bool(new_ids) and new_ids[-1] == eot
  continuation = tokenizer_lib.decode(tok, new_ids[:-1] if ended else new_ids)
  result = dict(
      text=prompt + continuation, continuation=continuation, prompt_ids=ids, new_ids=new_ids,
      ended_with_eot=ended, new_tokens=len(new_ids), seconds=seconds, compile_seconds=compile_s,
      tokens_per_second=len(new_ids) / seconds)
  if draft_workdir is not None:
    result.update(
        gamma=gamma, alpha=speculative.acceptance_rate(out),
        tokens_per_target_call=speculative.tokens_per_call(out),
        target_calls=int(out.rounds_B[0]))
  return result


def main(argv):
  del argv
  cli.setup()
  if not FLAGS.ynn_dots:  # before jax creates its backend
    cli.prefer_xla_dots()
  try:
    r = run(FLAGS.workdir, FLAGS.prompt, FLAGS.max_new_tokens, temperature=FLAGS.temperature,
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
