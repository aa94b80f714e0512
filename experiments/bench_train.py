"""Benchmark: train-step model FLOP/s against the machine's matmul peak (MFU), on one device.

  python -m experiments.bench_train [--steps=10] [--batch_size=8] [--out=results/bench_train]

On a CPU the peak is the best float32 matmul rate XLA reaches here (no published figure applies);
on a GPU or TPU the step runs in bfloat16 and MFU is reported against both the measured bfloat16
matmul peak and the chip's published dense peak. Writes results.json.
"""

import json
import os
import time

from absl import flags

from experiments import common

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script. Defined on demand, not at import, so tests and other scripts can
  import its functions beside other experiment scripts (absl refuses a flag defined twice)."""
  flags.DEFINE_integer("steps", 10, "Timed train steps (after one compile-and-warm-up step).")
  flags.DEFINE_integer("batch_size", 8, "Sequences per step.")
  flags.DEFINE_integer("seq_len", 512, "Tokens per sequence.")
  flags.DEFINE_integer("d_model", 512, "Model width.")
  flags.DEFINE_integer("n_layers", 8, "Layers.")
  flags.DEFINE_integer("vocab_size", 4096, "Vocabulary size.")
  flags.DEFINE_string("out", "results/bench_train", "Output directory for results.json.")


def main(argv):
  del argv
  common.setup()
  import jax
  import jax.numpy as jnp
  import ml_collections
  import numpy as np

  from model import transformer
  from model.config import ModelConfig, count_params, flops_per_token
  from train import mfu as mfu_lib
  from train import optimizer as optimizer_lib
  from train import step as step_lib

  device = jax.devices()[0]
  on_cpu = device.platform == "cpu"
  dtype = "float32" if on_cpu else "bfloat16"
  peak_dtype = jnp.float32 if on_cpu else jnp.bfloat16
  measured_peak = mfu_lib.measure_matmul_peak(peak_dtype, n=2048 if on_cpu else 8192, seconds=3.0)
  published = mfu_lib.published_peak(device)

  cfg = ModelConfig(
      vocab_size=FLAGS.vocab_size, d_model=FLAGS.d_model, n_layers=FLAGS.n_layers, n_heads=8,
      n_kv_heads=8, d_ff=4 * FLAGS.d_model, max_seq_len=FLAGS.seq_len, dtype=dtype,
      attention_impl="reference" if on_cpu else "auto")
  train_cfg = ml_collections.ConfigDict(dict(lr=1e-3, warmup_steps=10, weight_decay=0.1, grad_clip=1.0))
  tx = optimizer_lib.make(train_cfg, 1000)
  graphdef, params = transformer.create(cfg, jax.random.key(0))
  state = step_lib.init_state(params, tx, 0)
  step = jax.jit(step_lib.make_train_step(
      step_lib.lm_loss(graphdef, -1), tx, grad_accum=1,
      lr_schedule=optimizer_lib.schedule(1e-3, 10, 1000)), donate_argnums=0)
  batch = jax.random.randint(jax.random.key(1), (FLAGS.batch_size, FLAGS.seq_len + 1), 0, cfg.vocab_size)

  state, m = step(state, batch)  # compile and warm up
  jax.block_until_ready(m["loss"])
  times = []
  for _ in range(FLAGS.steps):
    t0 = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m["loss"])
    times.append(time.perf_counter() - t0)
  step_time = float(np.median(times))
  tokens = FLAGS.batch_size * FLAGS.seq_len
  model_flops = flops_per_token(cfg, FLAGS.seq_len) * tokens / step_time
  result = {
      "device": str(device.device_kind),
      "platform": device.platform,
      "compute_dtype": dtype,
      "model": cfg.to_dict(),
      "params": count_params(cfg),
      "batch_size": FLAGS.batch_size,
      "seq_len": FLAGS.seq_len,
      "step_time_s_median": step_time,
      "tokens_per_sec": tokens / step_time,
      "flops_per_token": flops_per_token(cfg, FLAGS.seq_len),
      "model_flops_per_sec": model_flops,
      "measured_matmul_peak_flops": measured_peak,
      "mfu_vs_measured_peak": model_flops / measured_peak,
  }
  if published:
    result["published_peak_flops"] = published
    result["mfu_vs_published_peak"] = model_flops / published
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, "results.json"), "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps({k: v for k, v in result.items() if k != "model"}, indent=2))


if __name__ == "__main__":
  common.run(main, define_flags)
