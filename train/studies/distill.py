"""Sequence-level distillation data for a speculative draft: the target's own continuations,
greedy or sampled.

A draft is only as useful as its agreement with the target's greedy choice (the acceptance rate
alpha). Trained on the corpus, a small draft learns the corpus, and agrees with the target only
where both happen to be right. Trained on the target's outputs (sequence-level knowledge
distillation, Kim & Rush 2016), it learns the target's own greedy function, which is what
verification checks. Each line of the output is {"text": prompt + greedy continuation}: the prompt
is a random window of the target's training rows (its prepared shards), started as generation
starts a prompt, so the draft also sees corpus text; the continuation is decoded greedily by the
target, batched. experiments.distill_data is the command line; experiments/configs/decode_draft.py
trains the draft on the file.

Greedy text teaches the draft the target's argmax, which is what greedy verification checks, and
nothing else: at temperature 1 such a draft is sharper than the target and alpha falls to about
0.4 (docs/inference.md). A draft meant for sampling learns from continuations sampled at that
temperature (sampling= SamplingConfig(temperature=1.0), top-k / top-p as generation has them):
their tokens follow the target's distribution, so the draft's cross-entropy on them is the
forward KL(target || draft) up to the target's entropy (the logit loss of train/kl_distill.py
adds the whole distribution at every position). Continuation i samples with the key
fold_in(key(seed), i), so the file depends on the seed only, not on the batch.

The file is written to a temporary name and renamed when complete, so a killed run leaves no
file that looks finished.
"""

from __future__ import annotations

import glob
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from model import generation, sampling
from train.data import shards
from train.data import tokenizer as tokenizer_lib
from train.saved_run import check_fits, load_run


def prompt_rows(workdir: str, n: int, length: int, seed: int) -> np.ndarray:
  """(n, length) int32: random windows of the run's prepared training shards."""
  folders = sorted(os.path.dirname(m) for m in glob.glob(os.path.join(workdir, "data", "*",
                                                                      shards.MANIFEST)))
  if not folders:
    raise FileNotFoundError(f"{workdir}/data holds no prepared shards; train the target first")
  rows = shards.Rows.concat([shards.open_split(f, shards.read_manifest(f), "train", length)
                             for f in folders])
  pick = np.random.default_rng(seed).choice(rows.n_rows, size=n, replace=n > rows.n_rows)
  return rows.read(np.sort(pick))


def continuation_keys(seed: int, first: int, n: int) -> jax.Array:
  """(n,) PRNG keys of continuations first..first+n-1: fold_in(key(seed), i)."""
  base = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(first, first + n))


def record(target: str, out: str, *, prompts: int, prompt_tokens: int, new_tokens: int,
           batch: int, seed: int = 0,
           sampling_cfg: sampling.SamplingConfig = sampling.SamplingConfig(temperature=0.0),
           ) -> dict:
  """Writes `prompts` lines of prompt + continuation (greedy by default, else drawn as
  sampling_cfg says) to out (via out.tmp); the summary: the file, the continuations and tokens
  written, the sampling settings and the seconds. seed chooses the prompts and the samples."""
  for name, value in (("prompts", prompts), ("prompt_tokens", prompt_tokens),
                      ("new_tokens", new_tokens), ("batch", batch)):
    if value < 1:
      raise ValueError(f"--{name} must be >= 1, got {value}")
  cfg, graphdef, params, tok = load_run(target)
  start = tokenizer_lib.start_ids(tok)
  check_fits(cfg, target, len(start) + prompt_tokens, new_tokens)
  rows = prompt_rows(target, prompts, prompt_tokens, seed)
  # eot = -1: every continuation runs its full length (an end-of-text is recorded, not obeyed).
  spec = generation.DecodeSpec(new_tokens, -1, sampling_cfg)
  fn = generation.make_generate(cfg, graphdef, spec)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  tmp = out + ".tmp"
  t0, written = time.perf_counter(), 0
  with open(tmp, "w", encoding="utf-8") as f:
    for lo in range(0, len(rows), batch):
      chunk = [start + r.tolist() for r in rows[lo:lo + batch]]
      chunk += [chunk[0]] * (batch - len(chunk))  # one compiled shape; the fillers are dropped
      ids, lengths = generation.pad_prompts(chunk, 0)
      new = np.asarray(fn(params, ids, lengths, continuation_keys(seed, lo, batch)).tokens_BxN)
      for i in range(min(batch, len(rows) - lo)):
        text = tokenizer_lib.decode(tok, rows[lo + i].tolist() + new[i].tolist())
        f.write(json.dumps({"text": text}) + "\n")
        written += 1
      print(f"{written}/{len(rows)} continuations, {time.perf_counter() - t0:.0f} s", flush=True)
  os.replace(tmp, out)
  return {"out": out, "continuations": written, "tokens": written * (prompt_tokens + new_tokens),
          "temperature": sampling_cfg.temperature, "top_k": sampling_cfg.top_k,
          "top_p": sampling_cfg.top_p, "seed": seed, "seconds": time.perf_counter() - t0}
