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
Writes results.json and attention_variants.png. The study's maths and measuring are
train/studies/attention_arms.py.
"""

from __future__ import annotations

import json
import os

from absl import flags
from ml_collections import config_flags

from train import cli, provenance

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file(
      "config", "experiments/configs/attention_variants.py", "Base (MHA) config.")
  flags.DEFINE_string("workdir", "runs/attention_variants", "Parent directory of the runs.")
  flags.DEFINE_string("out", "results/attention_variants", "Where results.json and the plot go.")
  flags.DEFINE_list("variants", "mha,gqa,mqa,mla,swa", "Which arms, from the config's VARIANTS.")
  flags.DEFINE_integer("context", 2048, "Prompt length of the decode measurement.")
  flags.DEFINE_integer("new_tokens", 256, "Tokens generated in the decode measurement.")


def main(argv):
  del argv
  cli.setup()
  import jax.numpy as jnp

  from experiments.configs import attention_variants as variants_cfg
  from model.config import ModelConfig
  from train import files, loop, pretrain
  from train.studies import attention_arms as arms

  unknown = [v for v in FLAGS.variants if v not in variants_cfg.VARIANTS]
  if unknown:
    cli.fail(ValueError(f"--variants: unknown {unknown}; known: {sorted(variants_cfg.VARIANTS)}"))
  base = ModelConfig.from_dict(FLAGS.config.model.to_dict())
  results = {"context": FLAGS.context, "new_tokens": FLAGS.new_tokens, "arms": {},
             "large_shape": {"dims": arms.LARGE, "budget_bytes": arms.LARGE_BUDGET_BYTES,
                             "small_budget_bytes": arms.SMALL_BUDGET_BYTES}}
  try:
    # Train every arm first, then measure decoding for all of them back to back, so the
    # timings share the machine's conditions as far as one process can make them.
    workdirs = {}
    for name in FLAGS.variants:
      model_cfg = arms.equal_param_d_ff(base, variants_cfg.VARIANTS[name])
      config = arms.arm_config(FLAGS.config, model_cfg, variants_cfg.VARIANTS[name])
      workdirs[name] = os.path.join(FLAGS.workdir, name)
      pretrain.train(config, workdirs[name])
      results["arms"][name] = arms.summarise(config, model_cfg, workdirs[name])
    for name, workdir in workdirs.items():
      arm = results["arms"][name]
      arm["decode"] = arms.decode_after_prompt(workdir, FLAGS.context, FLAGS.new_tokens)
      arm["memory_budget_large"] = arms.largest_context(arms.large_shape(name),
                                                        arms.LARGE_BUDGET_BYTES, jnp.bfloat16)
      print(json.dumps({name: {k: arm[k] for k in ("final_eval_loss", "decode")}}), flush=True)
  except (ValueError, FileNotFoundError, loop.NonFiniteLoss) as e:
    cli.fail(e)
  os.makedirs(FLAGS.out, exist_ok=True)
  files.write_json_atomic(os.path.join(FLAGS.out, "results.json"), provenance.stamp(results))
  arms.plot(results, FLAGS.out)


if __name__ == "__main__":
  cli.run(main, define_flags)
