"""The measurements that matter on an accelerator, in one process, into one results.json.

  python -m experiments.accelerator --out=results/accelerator [--smoke] [--sections=...]

On whatever backend JAX finds (a GPU, a TPU, or the CPU), each section measured here, beside a
matmul peak measured in the same process:
  train_step  llmlab's train step at 0.34B and 0.89B parameters (the larger also at twice the
              batch and with its layers unrolled), the first timed alternately with the plain
              peer step (train/studies/train_speed.py, as experiments.bench_train): model
              FLOP/s, tokens/s, ratio to the measured matmul peak (bfloat16 on accelerators,
              float32 on a CPU) and to the published one
  attention   forward+backward time and compiled memory of every attention implementation this
              backend has (reference, flash; cudnn, pallas on GPU) against sequence length
              (train/studies/attention_speed.py)
  decode      greedy decode tokens/s of a randomly initialised model at a long context, at batch
              1 and 8, against the bound that memory bandwidth measured here sets: bytes read per
              step (weights and the whole cache) over bandwidth (train/studies/roofline.py)
  speculative the costs that set speculative decoding's speed here: a verification pass over
              gamma + 1 tokens and a draft step (a model 28x smaller) against a one-token target
              step, and the measured time of one round of model/speculative.py's loop; from them,
              the speedup at acceptance rates alpha (random weights accept almost nothing, so
              the speedup is computed for given alphas, not observed: see docs/inference.md;
              train/studies/speculative_costs.py)
  zero        the compiled train step's peak memory per device at ZeRO stages 0-3 on the devices
              there are (train/studies/zero_stage_memory.py, as experiments.zero_memory; on one
              device every stage holds everything, so they differ only with several)
Each section is guarded: an exception is recorded under its name and the next section runs.
results.json is rewritten after every section, so a run cut short keeps what it measured
(train/studies/accelerator_suite.py runs them).

--smoke shrinks every size so the whole script runs on a CPU in seconds (the test suite runs it).
It imports neither grain nor ml_collections nor tokenizers: it runs where only jax, flax, optax,
orbax and absl are installed (docs/training.md says how to carry wheels to a device machine).
"""

from __future__ import annotations

import json
import os
from typing import Any

from absl import flags

from train import cli

FLAGS = flags.FLAGS
# train/studies/accelerator_suite.py's sections, named here so the flags need no jax import.
SECTIONS = ("train_step", "attention", "decode", "speculative", "zero")


def define_flags() -> None:
  """The flags of this script (cli.run defines them before parsing)."""
  flags.DEFINE_string("out", "results/accelerator", "Output directory for results.json.")
  flags.DEFINE_bool("smoke", False, "Tiny sizes everywhere: a CPU runs it all in seconds.")
  flags.DEFINE_list("sections", list(SECTIONS), f"Sections to run, of {', '.join(SECTIONS)}.")
  flags.DEFINE_list("train_sizes", [], "Indices of the train_step section's model sizes to run "
                    "(empty: all).")
  flags.DEFINE_bool("replot", False, "Only redraw accelerator.png from --out's results.json.")


def sizes(smoke: bool) -> dict[str, Any]:
  """Every size the sections use; the smoke sizes only exercise the code."""
  if smoke:
    return {
        "train_dims": [dict(batch_size=2, seq_len=32, d_model=32, n_layers=1, n_heads=2, d_ff=64,
                            vocab_size=128)],
        "train_steps": 1, "peak_n": 128, "peak_seconds": 0.1,
        "attention": dict(ns=[128], batch=1, heads=2, kv_heads=2, head_dim=16, reps=1),
        "decode": dict(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64, vocab=128,
                       batches=(1, 2), context=32, steps=256, repeats=3,
                       bandwidth_bytes=1 << 22),
        "speculative": dict(draft=dict(d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32),
                            gamma=2, new_tokens=8, passes=8, repeats=2),
        # Stages 0 and 3 only: the same code path as all four, at half the compile time.
        "zero": dict(d_model=32, n_layers=1, n_heads=2, d_ff=64, vocab=128, batch=2, seq_len=16,
                     stages=(0, 3)),
    }
  return {
      # 0.34B and 0.89B parameters; float32 master weights and Adam moments, bfloat16
      # compute. The peer is timed beside the first only (its compile would cost minutes more).
      # The larger model also at twice the batch, and with its layers unrolled (scan_layers
      # False: XLA fuses across layer boundaries), to see which the MFU figure depends on.
      "train_dims": [dict(batch_size=16, seq_len=2048, d_model=1024, n_layers=24, n_heads=8,
                          d_ff=2816, vocab_size=32768),
                     dict(batch_size=8, seq_len=2048, d_model=2048, n_layers=16, n_heads=16,
                          d_ff=5632, vocab_size=32768),
                     dict(batch_size=16, seq_len=2048, d_model=2048, n_layers=16, n_heads=16,
                          d_ff=5632, vocab_size=32768),
                     dict(batch_size=8, seq_len=2048, d_model=2048, n_layers=16, n_heads=16,
                          d_ff=5632, vocab_size=32768, scan_layers=False)],
      "train_steps": 10, "peak_n": 8192, "peak_seconds": 3.0,
      "attention": dict(ns=[2048, 4096, 8192, 16384], batch=1, heads=16,
                        kv_heads=16, head_dim=128, reps=5),
      "decode": dict(d_model=2048, n_layers=16, n_heads=16, n_kv_heads=4, d_ff=5632, vocab=32768,
                     batches=(1, 8), context=4096, steps=64, repeats=3, bandwidth_bytes=1 << 30),
      "speculative": dict(draft=dict(d_model=512, n_layers=4, n_heads=8, n_kv_heads=2, d_ff=1408),
                          gamma=4, new_tokens=128, passes=32, repeats=3),
      "zero": dict(d_model=1024, n_layers=8, n_heads=8, d_ff=4096, vocab=32768, batch=8,
                   seq_len=1024, stages=(0, 1, 2, 3)),
  }


def main(argv):
  del argv
  cli.setup()
  from train.studies import accelerator_suite

  if FLAGS.replot:
    with open(os.path.join(FLAGS.out, "results.json")) as f:
      accelerator_suite.plot(json.load(f), FLAGS.out)
    return
  unknown = [n for n in FLAGS.sections if n not in SECTIONS]
  if unknown:
    cli.fail(ValueError(f"--sections: unknown {', '.join(unknown)}; "
                           f"choose from {', '.join(SECTIONS)}"))
  try:
    train_sizes = tuple(int(i) for i in FLAGS.train_sizes)
  except ValueError:
    cli.fail(ValueError(f"--train_sizes: expected integers, got {','.join(FLAGS.train_sizes)}"))
  result = accelerator_suite.run_sections(
      list(FLAGS.sections), dict(sizes(FLAGS.smoke), train_sizes=train_sizes), FLAGS.smoke,
      FLAGS.out)
  headline = {"device": result["device"], "errors": list(result["errors"])}
  train = result["sections"].get("train_step", {}).get("variants", {}).get("llmlab")
  if train:
    headline["train_step_ratio_to_peak"] = train["ratio_to_measured_peak"]
  decode = result["sections"].get("decode")
  if decode:
    headline["decode_fraction_of_bound"] = decode["fraction_of_bound"]
  spec = result["sections"].get("speculative")
  if spec:
    headline["speculative_speedup_at_alpha_0.8"] = spec["speedup_at_alpha"]["0.8"]
  print(cli.format_summary(headline), flush=True)


if __name__ == "__main__":
  cli.run(main, define_flags)
