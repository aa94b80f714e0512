"""A trained workdir loaded for inference: its newest checkpoint and tokenizer, one continuation
of a prompt generated from it with a KV cache, optionally speculative (generate), and many prompts
decoded in batches with stop strings (generate_batch).

The prompt starts as a text starts in the run's training (train/data/tokenizer.py start_ids): after
an end-of-text for llmlab's own runs (documents are joined with it), and for a model imported
from Hugging Face with exactly what its tokenizer adds (its BOS, or nothing), so greedy decoding
gives the tokens transformers' generate gives. experiments.generate is the command line.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Optional, Sequence

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


def clip_new_tokens(cfg: ModelConfig, n_prompt: int, max_new_tokens: int) -> tuple[int, str]:
  """(max_new_tokens, "") when the prompt and the new tokens fit cfg.max_seq_len; else the most
  that fit and a one-line note saying so. ValueError when the prompt leaves no room at all."""
  if max_new_tokens < 1:
    raise ValueError(f"--max_new_tokens must be >= 1, got {max_new_tokens}")
  room = cfg.max_seq_len - n_prompt
  if room < 1:
    raise ValueError(f"the prompt is {n_prompt} tokens (with its start token, if any), leaving no "
                     f"room in max_seq_len={cfg.max_seq_len}; shorten it")
  if max_new_tokens <= room:
    return max_new_tokens, ""
  return room, (f"note: max_new_tokens={max_new_tokens} clipped to {room}: the prompt ({n_prompt} "
                f"tokens) and the new tokens must fit max_seq_len={cfg.max_seq_len}")


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
  """Generates one continuation (max_new_tokens clipped to what fits the model, with a note);
  returns the text (prompt and continuation), the continuation,
  the prompt's token ids (with its start token), the new ids (with the end-of-text that stopped
  them, if one did) and the statistics experiments.generate prints: seconds and tokens per second
  of the compiled call (compile_seconds apart), and for speculative decoding gamma, alpha, tokens
  per target call and target calls, and the clipping note ("" when none)."""
  sc = sampling.SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)
  cfg, graphdef, params, tok = load_run(workdir)
  eot = tokenizer_lib.special_id(tok, tokenizer_lib.EOT)
  ids = tokenizer_lib.start_ids(tok) + tokenizer_lib.encode(tok, prompt)
  if not ids:  # an imported tokenizer that adds no BOS, and an empty prompt
    raise ValueError(f"the prompt encodes to no token and the tokenizer of {workdir} starts a "
                     "text with none; give a non-empty --prompt")
  check_fits(cfg, workdir, len(ids), 1)
  max_new_tokens, note = clip_new_tokens(cfg, len(ids), max_new_tokens)
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
      tokens_per_second=len(new_ids) / seconds, note=note)
  if draft_workdir is not None:
    result.update(
        gamma=gamma, alpha=speculative.acceptance_rate(out),
        tokens_per_target_call=speculative.tokens_per_call(out),
        target_calls=int(out.rounds_B[0]))
  return result


@dataclasses.dataclass(frozen=True)
class Loaded:
  """A run loaded once for many calls: model (decoding layout), parameters and tokenizer."""

  workdir: str
  cfg: ModelConfig
  graphdef: Any
  params: Any
  tokenizer: Any

  @staticmethod
  def of(workdir: str) -> "Loaded":
    return Loaded(workdir, *load_run(workdir))

  def prompt_ids(self, prompt: str) -> list[int]:
    """The prompt's ids after the run's start token(s) (module docstring); ValueError when that
    is no token at all."""
    ids = tokenizer_lib.start_ids(self.tokenizer) + tokenizer_lib.encode(self.tokenizer, prompt)
    if not ids:
      raise ValueError(f"the prompt {prompt!r} encodes to no token and the tokenizer of "
                       f"{self.workdir} starts a text with none; give a non-empty prompt")
    return ids


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
  """(text up to the earliest occurrence of any stop string, whether one occurred)."""
  hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
  return (text[:min(hits)], True) if hits else (text, False)


def _decode_rows(fn, run: Loaded, ids: list[list[int]], keys_B: jax.Array, shape: tuple[int, int],
                 eot: int) -> list[list[int]]:
  """Each prompt's new ids (its end-of-text kept, if it made one). The prompts are right-padded
  into one (B, T) batch of the fixed `shape` (model/generation.py decodes each row at its own
  positions), filler rows repeating the first, so every batch reuses one compiled fn."""
  b, t = shape
  rows = list(ids) + [ids[0]] * (b - len(ids))
  prompts_BxT = jax.numpy.asarray([r + [eot] * (t - len(r)) for r in rows], jax.numpy.int32)
  lengths_B = jax.numpy.asarray([len(r) for r in rows], jax.numpy.int32)
  keys_B = jax.numpy.concatenate([keys_B, jax.numpy.repeat(keys_B[:1], b - len(ids), 0)])
  return generation.trim(fn(run.params, prompts_BxT, lengths_B, keys_B))[:len(ids)]


@functools.lru_cache(maxsize=16)
def _generate_fn(cfg: ModelConfig, graphdef: Any, spec: generation.DecodeSpec):
  """generation.make_generate, made once per model and spec: a run that generates again (a
  training run's tasks at each evaluation, train/eval_tasks.py) reuses its compiled decoder."""
  return generation.make_generate(cfg, graphdef, spec)


def generate_batch(run: Loaded, prompts: Sequence[str], max_new_tokens: int, *,
                   temperature: float = 1.0, seed: int = 0, top_k: int = 0, top_p: float = 1.0,
                   stop: Sequence[str] = (), batch_size: int = 8,
                   echo: bool = False) -> tuple[list[dict[str, Any]], str]:
  """([{"prompt", "text", "continuation", "new_tokens", "stopped"}] in prompt order, note).

  Prompts are decoded batch_size at a time; prompt i samples with the key fold_in(seed, i), so
  its text does not depend on the batch it shares. max_new_tokens is clipped once, to what the
  longest prompt leaves of max_seq_len (note: the one-line note, "" when none). Each
  continuation is cut at its earliest stop string (stopped: "stop", "eot" or "" for the token
  limit); text is the continuation, after the prompt when echo.
  """
  if batch_size < 1:
    raise ValueError(f"--batch_size must be >= 1, got {batch_size}")
  if not prompts:
    raise ValueError("no prompt to generate from")
  ids = [run.prompt_ids(p) for p in prompts]
  n_new, note = clip_new_tokens(run.cfg, max(len(i) for i in ids), max_new_tokens)
  eot = tokenizer_lib.special_id(run.tokenizer, tokenizer_lib.EOT)
  spec = generation.DecodeSpec(n_new, eot, sampling.SamplingConfig(temperature, top_k, top_p))
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
      jax.random.key(seed), jax.numpy.arange(len(ids)))
  fn = _generate_fn(run.cfg, run.graphdef, spec)
  shape = (min(batch_size, len(ids)), max(len(i) for i in ids))
  results = []
  for lo in range(0, len(ids), batch_size):
    for i, new in enumerate(_decode_rows(fn, run, ids[lo:lo + batch_size],
                                         keys[lo:lo + batch_size], shape, eot), start=lo):
      ended = bool(new) and new[-1] == eot
      text, cut = cut_at_stop(tokenizer_lib.decode(run.tokenizer, new[:-1] if ended else new),
                              stop)
      results.append(dict(prompt=prompts[i], continuation=text, new_tokens=len(new),
                          text=prompts[i] + text if echo else text,
                          stopped="stop" if cut else ("eot" if ended else "")))
  return results, note
