"""Speculative decoding's costs on this device, and the speedup they give at given alphas.

Randomly initialised models accept almost no draft token, so the speedup is not observed here
but computed from three measured times: the one-token target step t1, the verification pass
over gamma + 1 tokens, and one whole round of model/speculative.py's loop (gamma draft steps,
the pass, acceptance and bookkeeping), t_round. A round emits E(alpha, gamma) = (1 -
alpha^(gamma+1)) / (1 - alpha) tokens on average, so speedup(alpha) = E(alpha, gamma) t1 /
t_round. The loop is also checked to emit exactly the target's greedy tokens.
Nothing here imports grain, ml_collections or tokenizers (experiments.accelerator runs it).
"""

from __future__ import annotations

import jax
import numpy as np

from model import generation, sampling, speculative
from train.studies import decode_speed
from train.studies.bench_timing import best_time
from train.studies.roofline import param_bytes

ALPHAS = (0.6, 0.7, 0.8, 0.9)


def greedy_identical_in_float32(d: dict, sp: dict, prompt, keys) -> bool:
  """Whether speculative greedy decoding emits the target's greedy tokens with float32 models of
  the section's shapes (random weights)."""
  greedy = sampling.SamplingConfig(temperature=0.0)
  n = sp["new_tokens"]
  tcfg, tdef, tparams = decode_speed.random_decode_model(d, True)
  dcfg, ddef, dparams = decode_speed.random_decode_model(d, True, **sp["draft"])
  spec = speculative.make_generate(tcfg, tdef, dcfg, ddef,
                                   speculative.SpeculativeSpec(sp["gamma"], n, -1, greedy))
  base = generation.make_generate(tcfg, tdef, generation.DecodeSpec(n, -1, greedy))
  return bool(np.array_equal(np.asarray(spec(tparams, dparams, *prompt, keys).tokens_BxN),
                             np.asarray(base(tparams, *prompt, keys).tokens_BxN)))


def random_model_costs(s: dict, on_cpu: bool) -> dict:
  """experiments.accelerator's speculative section: the target (s["decode"]) and its draft
  (s["speculative"]["draft"] dims), randomly initialised; see the module docstring."""
  d, sp = s["decode"], s["speculative"]
  g = sp["gamma"]
  tcfg, tdef, tparams = decode_speed.random_decode_model(d, on_cpu)
  dcfg, ddef, dparams = decode_speed.random_decode_model(d, on_cpu, **sp["draft"])
  pass_s = {t: decode_speed.pass_seconds(tcfg, tdef, tparams, t, sp["passes"], sp["repeats"])
            for t in (1, g + 1)}
  draft_step_s = decode_speed.pass_seconds(dcfg, ddef, dparams, 1, sp["passes"], sp["repeats"])
  prompt = generation.pad_prompts([list(range(1, 17))], 0)
  keys = jax.random.split(jax.random.key(0), 1)
  greedy = sampling.SamplingConfig(temperature=0.0)
  n = sp["new_tokens"]
  spec_fn = speculative.make_generate(tcfg, tdef, dcfg, ddef,
                                      speculative.SpeculativeSpec(g, n, -1, greedy))
  base_fn = generation.make_generate(tcfg, tdef, generation.DecodeSpec(n, -1, greedy))
  out = jax.block_until_ready(spec_fn(tparams, dparams, *prompt, keys))
  base = jax.block_until_ready(base_fn(tparams, *prompt, keys))
  spec_s = best_time(
      lambda: jax.block_until_ready(spec_fn(tparams, dparams, *prompt, keys)), sp["repeats"])
  same = np.asarray(out.tokens_BxN)[0] == np.asarray(base.tokens_BxN)[0]
  # Greedy verification accepts exactly the target's argmax, so the outputs can differ only
  # where a pass over gamma + 1 tokens and a one-token step round differently and the top two
  # logits are that close (bfloat16, random weights). The same check in float32 tells which.
  same32 = bool(same.all()) if on_cpu else greedy_identical_in_float32(d, sp, prompt, keys)
  rounds = int(out.rounds_B.sum())
  t_round = spec_s / rounds
  t1 = pass_s[1]
  return {
      "target": tcfg.to_dict(), "draft": dcfg.to_dict(),
      "target_weight_bytes": param_bytes(tparams), "draft_weight_bytes": param_bytes(dparams),
      "gamma": g, "one_token_step_s": t1, "verify_pass_s": pass_s[g + 1],
      "verify_pass_over_one_token_step": pass_s[g + 1] / t1,
      "draft_step_over_target_step": draft_step_s / t1,
      "round_s": t_round, "round_over_one_token_step": t_round / t1,
      "rounds": rounds, "alpha_observed_random_weights": speculative.acceptance_rate(out),
      "same_tokens_as_target_greedy": bool(same.all()),
      "first_differing_token": int(np.argmin(same)) if not same.all() else None,
      "same_tokens_as_target_greedy_float32": bool(same32),
      "speedup_at_alpha": {str(a): speculative.expected_tokens_per_call(a, g) * t1 / t_round
                           for a in ALPHAS},
      "note": "speedup computed from measured times at the given alphas, not observed"}
