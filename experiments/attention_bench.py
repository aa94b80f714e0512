"""Benchmark: memory and time of attention forward+backward against sequence length, per implementation.

  python -m experiments.attention_bench [--sizes=512,1024,...] [--out=results/attention]

For every implementation the backend has (reference, flash; cudnn and pallas on GPU, pallas on
TPU) and every n, compiles grad(sum(attention(q, k, v) * cotangent)) and records the compiler's
temporary memory (`memory_analysis().temp_size_in_bytes`: every buffer besides the inputs and the
outputs, so the score matrix and the saved residuals) and the wall time of one call. Compiling
allocates nothing, so reference's memory is recorded at every n; running it is skipped once that
memory passes --reference_limit_gib, and the skip is written down.

It also compiles (without running) the default experiment's whole train step at --train_seq_lens
with reference and with flash: the memory a real model needs, attention being one part of it.

Writes results.json (per implementation and n: memory, time, TFLOP/s; the log-log slopes of memory
against n; the ratios the README quotes; the train-step memory), memory.png and time.png.
The measuring is train/studies/attention_speed.py (with its FLOP count) and
train/studies/train_step_memory.py.
"""

import json
import os

from absl import flags

from train import cli, provenance

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script (cli.run defines them before parsing)."""
  flags.DEFINE_list("sizes", [], "Sequence lengths; default 512..16384 on CPU, 512..65536 on GPU/TPU.")
  flags.DEFINE_list("implementations", [], "Default: every implementation available on the backend.")
  flags.DEFINE_integer("batch", 1, "Sequences per call.")
  flags.DEFINE_integer("heads", 4, "Query heads H.")
  flags.DEFINE_integer("kv_heads", 4, "Key/value heads K (H = MHA, 1 = MQA).")
  flags.DEFINE_integer("head_dim", 64, "Head dimension Dh.")
  flags.DEFINE_string("dtype", "", "float32 or bfloat16; default float32 on CPU, bfloat16 elsewhere.")
  flags.DEFINE_bool("causal", True, "Causal attention (the decoder case).")
  flags.DEFINE_float("reference_limit_gib", 2.0,
                     "Reference runs only where its compiled temporary memory is below this.")
  flags.DEFINE_integer("reps", 3, "Timed calls per point after one warm-up call; the minimum is kept.")
  flags.DEFINE_integer("skip_check_n", 2048,
                       "n at which flash is also timed non-causal, to show causal skips half the tiles.")
  flags.DEFINE_list("train_seq_lens", ["2048", "16384"],
                    "Sequence lengths at which the default experiment's train step (batch 1) is compiled "
                    "with reference and with flash, to compare its temporary memory; empty: skip.")
  flags.DEFINE_integer("run_train_step_seq_len", 0,
                       "If > 0, instead of the sweep: run two train steps of the default experiment's "
                       "model with flash on one sequence of this length, writing train_step_run.json.")
  flags.DEFINE_string("out", "results/attention", "Output directory for results.json and the plots.")


def main(argv):
  del argv
  cli.setup()
  from experiments.configs import default
  from train.studies import train_step_memory

  if FLAGS.run_train_step_seq_len > 0:
    record = train_step_memory.run_train_step(default.get_config(), FLAGS.run_train_step_seq_len,
                                              FLAGS.out)
    print(cli.format_summary({k: v for k, v in record.items() if k != "model"}), flush=True)
    return
  import jax
  import jax.numpy as jnp

  from model.attention import available_implementations
  from train.studies import attention_speed

  device = jax.devices()[0]
  on_cpu = device.platform == "cpu"
  sizes = [int(s) for s in FLAGS.sizes] or (
      [512, 1024, 2048, 4096, 8192, 16384] if on_cpu else [512 * 2 ** i for i in range(8)])
  dtype = jnp.dtype(FLAGS.dtype or ("float32" if on_cpu else "bfloat16"))
  impls = FLAGS.implementations or list(available_implementations())
  b, h, kv, dh = FLAGS.batch, FLAGS.heads, FLAGS.kv_heads, FLAGS.head_dim
  shape = dict(batch=b, heads=h, kv_heads=kv, head_dim=dh, dtype=dtype)
  results, full_time = attention_speed.sweep(
      impls, sizes, shape, causal=FLAGS.causal, reps=FLAGS.reps,
      reference_limit_gib=FLAGS.reference_limit_gib, skip_check_n=FLAGS.skip_check_n)
  train_step_temp = {
      n: {impl: train_step_memory.train_step_temp_bytes(default.get_config(), impl, int(n))
          for impl in ("reference", "flash")}
      for n in FLAGS.train_seq_lens}
  summary = attention_speed.summarise(results, sizes, full_time, skip_check_n=FLAGS.skip_check_n,
                                      train_step_temp=train_step_temp, on_cpu=on_cpu)

  os.makedirs(FLAGS.out, exist_ok=True)
  record = {
      "device": str(device.device_kind), "platform": device.platform, "cpu_count": os.cpu_count(),
      "jax": jax.__version__, "dtype": dtype.name, "batch": b, "heads": h, "kv_heads": kv,
      "head_dim": dh, "causal": FLAGS.causal, "reps": FLAGS.reps, "time": "min over reps, seconds",
      "reference_limit_gib": FLAGS.reference_limit_gib,
      "results": {impl: {str(n): p for n, p in pts.items()} for impl, pts in results.items()},
      "summary": json.loads(json.dumps(summary, default=str)),
  }
  provenance.stamp(record)
  with open(os.path.join(FLAGS.out, "results.json"), "w", encoding="utf-8") as f:
    json.dump(record, f, indent=2)
  attention_speed.plot(results, summary, record, FLAGS.out)
  print(cli.format_summary(summary), flush=True)


if __name__ == "__main__":
  cli.run(main, define_flags)
