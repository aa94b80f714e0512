"""A trained workdir loaded for inference: its newest checkpoint and tokenizer, and one
continuation of a prompt generated from it, with a KV cache, optionally speculative.

The prompt starts as a text starts in the run's training (train/data/tokenizer.py start_ids): after
an end-of-text for llmlab's own runs (documents are joined with it), and for a model imported
from Hugging Face with exactly what its tokenizer adds (its BOS, or nothing), so greedy decoding
gives the tokens transformers' generate gives. experiments.generate is the command line.
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional

import jax

from model import generation, sampling, speculative, transformer
from model.config import ModelConfig
from train import checkpoint
from train.data import tokenizer as tokenizer_lib


def load_run(workdir: str):
  """(ModelConfig, graphdef, params, tokenizer) of a run, or FileNotFoundError naming it.

  The parameters come in the decoding layout (transformer.unstack_layers: one buffer per layer).
  """
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"workdir {workdir} does not exist")
  tok = tokenizer_lib.load(workdir)
  cfg, _, params = checkpoint.load_params(workdir)
  cfg, graphdef, params = transformer.unstack_layers(cfg, params)
  return cfg, graphdef, params, tok


def check_fits(cfg: ModelConfig, workdir: str, n_prompt: int, max_new_tokens: int) -> None:
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


def _speculative_fn(cfg: ModelConfig, graphdef, tok, workdir: str, draft_workdir: str,
                    n_prompt: int, spec: speculative.SpeculativeSpec):
  """(the speculative generate function, the draft's params), once the draft is checked to share
  the target's tokenizer and vocabulary and to fit the prompt and new tokens."""
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
  check_fits(dcfg, draft_workdir, n_prompt, spec.max_new_tokens)
  return speculative.make_generate(cfg, graphdef, dcfg, dgraphdef, spec), dparams


def generate(
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
  them, if one did) and the statistics experiments.generate prints: seconds and tokens per second
  of the compiled call (compile_seconds apart), and for speculative decoding gamma, alpha, tokens
  per target call and target calls."""
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
    fn, dparams = _speculative_fn(cfg, graphdef, tok, workdir, draft_workdir, len(ids),
                                  speculative.SpeculativeSpec(gamma, max_new_tokens, eot, sc))
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
