"""Study: MHA, GQA, MQA, latent attention (MLA) and sliding-window attention at equal parameters.

  python -m experiments.attention_variants [--workdir=runs/attention_variants]
      [--out=results/attention_variants] [--config=experiments/configs/attention_variants.py]
      [--variants=mha,gqa,mqa,mla,swa] [--context=2048] [--new_tokens=64]

Each variant is the base model with its attention changed and its d_ff re-solved so that every
arm has the MHA arm's non-embedding parameters (equal_param_d_ff). Each arm is an ordinary
training run in workdir/<name> (rerunning resumes it; a finished arm is only read back). Then, per
arm: validation loss; KV-cache bytes per token (the formula, which tests/test_generation.py checks
against the allocated cache, and the allocated cache itself at --context); greedy decode tokens/s
after a --context-token prompt (the prompt prefilled once, then --new_tokens one-token steps timed
as one jitted loop, best of 5); and the largest context whose cache fits a memory
budget, at the study's own dims and at a Llama-3-8B-like shape (computed from the formula).
Writes results.json and attention_variants.png.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from absl import flags
from ml_collections import config_flags

from train import cli

FLAGS = flags.FLAGS

# A Llama-3-8B-like shape for the memory-budget column: 32 layers of 32 heads of 128, bfloat16
# cache, and an 80 GB device that also holds 16 GB of bfloat16 weights.
LARGE = dict(d_model=4096, n_layers=32, n_heads=32, head_dim=128)
LARGE_VARIANTS = {
    "mha": dict(n_kv_heads=32), "gqa": dict(n_kv_heads=8), "mqa": dict(n_kv_heads=1),
    "mla": dict(n_kv_heads=32, kv_lora_rank=512, qk_rope_head_dim=64),
    "swa": dict(n_kv_heads=8, sliding_window=4096),
}
LARGE_BUDGET_BYTES = 80e9 - 16e9
SMALL_BUDGET_BYTES = 64e6  # the study's own model: a 64 MB cache budget, batch 1


def define_flags() -> None:
  config_flags.DEFINE_config_file(
      "config", "experiments/configs/attention_variants.py", "Base (MHA) config.")
  flags.DEFINE_string("workdir", "runs/attention_variants", "Parent directory of the runs.")
  flags.DEFINE_string("out", "results/attention_variants", "Where results.json and the plot go.")
  flags.DEFINE_list("variants", "mha,gqa,mqa,mla,swa", "Which arms, from the config's VARIANTS.")
  flags.DEFINE_integer("context", 2048, "Prompt length of the decode measurement.")
  flags.DEFINE_integer("new_tokens", 256, "Tokens generated in the decode measurement.")


def equal_param_d_ff(base, variant: dict):
  """The ModelConfig of `variant` (model.* settings) on `base`, with the d_ff (a multiple of 8)
  that brings its non-embedding parameters closest to the base's."""
  from model.config import count_params

  target = count_params(base)["non_embedding"]
  cfg = dataclasses.replace(base, **variant)
  per_unit = 3 * cfg.d_model * cfg.n_layers  # one more unit of d_ff: w_gate, w_up, w_down
  rest = count_params(cfg)["non_embedding"] - per_unit * cfg.d_ff
  d_ff = max(8, round((target - rest) / per_unit / 8) * 8)
  return dataclasses.replace(cfg, d_ff=d_ff)


def largest_context(cfg, budget_bytes: float, dtype) -> dict:
  """The longest context whose KV cache (batch 1) fits budget_bytes; a sliding window's ring
  cache is bounded by the window, so any context fits once the ring does."""
  from model import kv_cache

  per_token = kv_cache.bytes_per_sequence(cfg, 1, dtype)
  if cfg.sliding_window:
    ring = kv_cache.bytes_per_sequence(cfg, 2 * cfg.sliding_window, dtype)
    return {"bytes_per_token": per_token, "ring_bytes": ring,
            "largest_context": "unbounded" if ring <= budget_bytes else 0}
  return {"bytes_per_token": per_token, "largest_context": int(budget_bytes // per_token)}


def large_shape(name: str):
  from model.config import ModelConfig

  return ModelConfig(vocab_size=128256, d_model=LARGE["d_model"], n_layers=LARGE["n_layers"],
                     n_heads=LARGE["n_heads"], d_ff=14336, max_seq_len=131072,
                     **LARGE_VARIANTS[name])


def decode_speed(workdir: str, context: int, new_tokens: int) -> dict:
  """Greedy decode tokens/s of the trained arm after a `context`-token random prompt (batch 1):
  the prompt is prefilled once (as generation does: window-sized chunks into a ring for a
  sliding window), then new_tokens one-token steps run as one jitted loop, timed alone."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from model import generation, kv_cache, transformer
  from train import checkpoint as ckpt_lib

  cfg, _, params = ckpt_lib.load_params(workdir)
  cfg = dataclasses.replace(cfg, max_seq_len=max(cfg.max_seq_len, context + new_tokens))
  cfg, graphdef, params = transformer.unstack_layers(cfg, params)
  prompt = jnp.asarray(np.random.RandomState(0).randint(0, cfg.vocab_size, (1, context)), jnp.int32)
  cache = kv_cache.init(cfg, 1, generation.cache_length(context, new_tokens), ring=True)
  logits_BxV, cache = jax.jit(
      lambda p, t, c: generation.prefill(graphdef, p, t, jnp.asarray([context]), c,
                                         chunk=cfg.sliding_window))(params, prompt, cache)

  @jax.jit
  def decode_steps(params, cache, tok_B):
    def step(i, carry):
      cache, tok_B = carry
      logits_Bx1xV, cache = transformer.decode(
          graphdef, params, tok_B[:, None], jnp.full((1, 1), context + i, jnp.int32), cache)
      return cache, jnp.argmax(logits_Bx1xV[:, 0], axis=-1).astype(jnp.int32)
    return jax.lax.fori_loop(0, new_tokens, step, (cache, tok_B))

  tok_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  jax.block_until_ready(decode_steps(params, cache, tok_B))  # compile
  best = float("inf")
  for _ in range(5):
    t0 = time.perf_counter()
    jax.block_until_ready(decode_steps(params, cache, tok_B))
    best = min(best, time.perf_counter() - t0)
  return {"context": context, "new_tokens": new_tokens, "decode_tokens_per_sec": new_tokens / best,
          "decode_s": best, "cache_slots": cache.max_len, "cache_bytes": cache.nbytes}


def summarise(config, model_cfg, workdir: str) -> dict:
  import numpy as np

  from model.config import count_params
  from train import metrics as metrics_lib

  records = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  evals = [r for r in records if "eval_loss" in r]
  tps = [r["tokens_per_sec"] for r in records if "tokens_per_sec" in r]
  return {
      "model": {k: v for k, v in model_cfg.to_dict().items()
                if k in ("n_kv_heads", "d_ff", "kv_lora_rank", "qk_rope_head_dim", "sliding_window")},
      "params": count_params(model_cfg),
      "final_eval_loss": evals[-1]["eval_loss"],
      "eval": [{"step": r["step"], "eval_loss": r["eval_loss"]} for r in evals],
      "train_tokens_per_sec": float(np.median(tps)) if tps else None,
      "memory_budget_small": largest_context(model_cfg, SMALL_BUDGET_BYTES, np.float32),
  }


def plot(results: dict, out_dir: str) -> None:
  from train import plots

  plt = plots.pyplot()
  arms = results["arms"]
  names = list(arms)
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
  axes[0].bar(names, [arms[n]["final_eval_loss"] for n in names])
  lo = min(arms[n]["final_eval_loss"] for n in names)
  axes[0].set(ylabel="validation loss (nats/token)", title="loss at equal parameters",
              ylim=(lo - 0.2, None))
  axes[1].bar(names, [arms[n]["memory_budget_small"]["bytes_per_token"] for n in names])
  axes[1].set(ylabel="KV-cache bytes per token (float32)", title="cache per token", yscale="log")
  axes[2].bar(names, [arms[n]["decode"]["decode_tokens_per_sec"] for n in names])
  axes[2].set(ylabel="tokens/s", title=f"greedy decode at a {results['context']}-token prompt")
  for ax in axes:
    ax.grid(alpha=0.3, axis="y")
  plots.save(fig, os.path.join(out_dir, "attention_variants.png"), dpi=110)


def main(argv):
  del argv
  cli.setup()
  from model.config import ModelConfig
  from experiments.configs import attention_variants as variants_cfg
  from train import files, loop, pretrain

  unknown = [v for v in FLAGS.variants if v not in variants_cfg.VARIANTS]
  if unknown:
    cli.fail(ValueError(f"--variants: unknown {unknown}; known: {sorted(variants_cfg.VARIANTS)}"))
  base = ModelConfig.from_dict(FLAGS.config.model.to_dict())
  results = {"context": FLAGS.context, "new_tokens": FLAGS.new_tokens, "arms": {},
             "large_shape": {"dims": LARGE, "budget_bytes": LARGE_BUDGET_BYTES,
                             "small_budget_bytes": SMALL_BUDGET_BYTES}}
  try:
    # Train every arm first, then measure decoding for all of them back to back, so the
    # timings share the machine's conditions as far as one process can make them.
    workdirs = {}
    for name in FLAGS.variants:
      model_cfg = equal_param_d_ff(base, variants_cfg.VARIANTS[name])
      config = FLAGS.config.copy_and_resolve_references()
      with config.unlocked():  # a variant's field may be one the base config leaves at default
        for key, value in model_cfg.to_dict().items():
          if key in variants_cfg.VARIANTS[name] or key == "d_ff":
            config.model[key] = value
      workdirs[name] = os.path.join(FLAGS.workdir, name)
      pretrain.train(config, workdirs[name])
      results["arms"][name] = summarise(config, model_cfg, workdirs[name])
    import jax.numpy as jnp
    for name, workdir in workdirs.items():
      arm = results["arms"][name]
      arm["decode"] = decode_speed(workdir, FLAGS.context, FLAGS.new_tokens)
      arm["memory_budget_large"] = largest_context(large_shape(name), LARGE_BUDGET_BYTES, jnp.bfloat16)
      print(json.dumps({name: {k: arm[k] for k in ("final_eval_loss", "decode")}}), flush=True)
  except (ValueError, FileNotFoundError, loop.NonFiniteLoss) as e:
    cli.fail(e)
  os.makedirs(FLAGS.out, exist_ok=True)
  files.write_json_atomic(os.path.join(FLAGS.out, "results.json"), results)
  plot(results, FLAGS.out)


if __name__ == "__main__":
  cli.run(main, define_flags)
