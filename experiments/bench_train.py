"""Benchmark: train-step model FLOP/s against the machine's matmul peak, beside a plain peer step.

  python -m experiments.bench_train [--steps=5] [--variant=both] [--out=results/bench_train]
      [--profile_steps=2:2]

In one process: the best matmul rate XLA reaches here (float32 on a CPU, which has no published
figure; bfloat16 on a GPU or TPU, also against the chip's published dense peak), llmlab's train
step, and with --variant=both the peer step of train/studies/peer_model.py (a plain Flax linen decoder of
the same width, depth, heads, d_ff and vocabulary with AdamW). The two steps are timed
alternately, step for step, so that a busy machine slows both alike and their ratio holds.

Each step's model FLOPs are its own architecture's (model.config.flops_per_token for llmlab's
SwiGLU blocks, peer.flops_per_token for the GELU MLP). Writes results.json: per variant the median
step time, tokens/s, model FLOP/s and its ratio to the measured peak, and llmlab / peer.
--profile_steps=A:B traces timed rounds A..B (both variants) into <out>/profile; those rounds are
left out of the medians (the profiler slows them).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Optional

from absl import flags

from train import cli

FLAGS = flags.FLAGS
VARIANTS = ("llmlab", "peer", "both")


def define_flags() -> None:
  """The flags of this script. Defined on demand, not at import, so tests and other scripts can
  import its functions beside other experiment scripts (absl refuses a flag defined twice)."""
  flags.DEFINE_integer("steps", 5, "Timed steps per variant (after one compile-and-warm-up step).")
  flags.DEFINE_integer("batch_size", 8, "Sequences per step.")
  flags.DEFINE_integer("seq_len", 512, "Tokens per sequence.")
  flags.DEFINE_integer("d_model", 512, "Model width.")
  flags.DEFINE_integer("n_layers", 8, "Layers.")
  flags.DEFINE_integer("n_heads", 8, "Attention heads (llmlab: as many key/value heads).")
  flags.DEFINE_integer("d_ff", 0, "Feed-forward width; 0: 4 x d_model.")
  flags.DEFINE_integer("vocab_size", 4096, "Vocabulary size.")
  flags.DEFINE_enum("variant", "both", VARIANTS, "llmlab's step, the peer's, or both alternating.")
  flags.DEFINE_string("attention_impl", "auto",
                      "llmlab's model.attention_impl (auto: flash on CPU).")
  flags.DEFINE_bool("scan_layers", False, "llmlab's model.scan_layers: on a CPU the unscanned "
                    "layers are faster (XLA copies the scan's stacked slices; docs/training.md).")
  flags.DEFINE_string("out", "results/bench_train", "Output directory for results.json.")
  cli.define_profile_steps_flag()


@dataclasses.dataclass(frozen=True)
class Dims:
  batch_size: int
  seq_len: int
  d_model: int
  n_layers: int
  n_heads: int
  d_ff: int
  vocab_size: int


@dataclasses.dataclass
class Bench:
  """One train step to time: step(state, batch) -> (state, anything), donating the state."""

  step: Callable[[Any, Any], tuple[Any, Any]]
  state: Any
  batch: Any
  flops_per_token: float


def llmlab_bench(dims: Dims, dtype: str, attention_impl: str, **model_overrides) -> Bench:
  """llmlab's pretraining step (train/step.py, lm_loss, AdamW with clipping) on one device."""
  import jax

  from model import transformer
  from model.config import ModelConfig, flops_per_token
  from train import optimizer as optimizer_lib
  from train import step as step_lib

  cfg = ModelConfig(
      vocab_size=dims.vocab_size, d_model=dims.d_model, n_layers=dims.n_layers,
      n_heads=dims.n_heads, n_kv_heads=dims.n_heads, d_ff=dims.d_ff, max_seq_len=dims.seq_len,
      dtype=dtype, attention_impl=attention_impl, **model_overrides)
  t = train_settings()
  tx = optimizer_lib.make(t, t.steps)
  graphdef, params = transformer.create(cfg, jax.random.key(0))
  step = jax.jit(step_lib.make_train_step(
      step_lib.lm_loss(graphdef, -1), tx, grad_accum=1,
      lr_schedule=optimizer_lib.schedule(t.lr, t.warmup_steps, t.steps)), donate_argnums=0)
  return Bench(step, step_lib.init_state(params, tx, 0), _batch(dims),
               flops_per_token(cfg, dims.seq_len))


def train_settings() -> Any:
  """The train.* settings of the benchmarks' optimizer and sharded step (train/settings.py needs
  no ml_collections, so experiments.accelerator runs where it is missing)."""
  from train.config import TrainSettings

  return TrainSettings(lr=1e-3, warmup_steps=10, weight_decay=0.1, grad_clip=1.0, steps=1000,
                       seed=0, grad_accum=1)


def peer_bench(dims: Dims, dtype: str) -> Bench:
  import jax

  from train.studies import peer_model as peer

  cfg = peer.PeerConfig(dims.vocab_size, dims.d_model, dims.n_layers, dims.n_heads, dims.d_ff,
                        dims.seq_len, dtype)
  step, state = peer.make_train_step(cfg, jax.random.key(0))
  return Bench(step, state, _batch(dims), peer.flops_per_token(cfg))


def _batch(dims: Dims):
  import jax

  return jax.random.randint(jax.random.key(1), (dims.batch_size, dims.seq_len + 1), 0,
                            dims.vocab_size)


def time_alternating(benches: dict[str, Bench], steps: int,
                     profile: Optional[tuple[int, int]] = None, logdir: str = "",
                     ) -> dict[str, list[float]]:
  """Seconds of each timed step per bench, the benches stepped in turn within every round.

  One warm-up step each first (it compiles). profile: rounds (first, last), counted from 1, run
  under the JAX profiler into logdir and left out of the times returned.
  """
  import jax

  for b in benches.values():
    b.state, out = b.step(b.state, b.batch)
    jax.block_until_ready((b.state, out))
  times = {name: [] for name in benches}
  for round_ in range(1, steps + 1):
    traced = profile is not None and profile[0] <= round_ <= profile[1]
    if traced and round_ == profile[0]:
      jax.profiler.start_trace(logdir)
    for name, b in benches.items():
      t0 = time.perf_counter()
      b.state, out = b.step(b.state, b.batch)
      jax.block_until_ready((b.state, out))
      if not traced:
        times[name].append(time.perf_counter() - t0)
    if traced and round_ == min(profile[1], steps):
      jax.profiler.stop_trace()
  return times


def summarise(bench: Bench, times: list[float], dims: Dims, peak: float) -> dict:
  import numpy as np

  step_s = float(np.median(times))
  tokens = dims.batch_size * dims.seq_len
  flops = bench.flops_per_token * tokens / step_s
  return {"step_time_s_median": step_s, "step_times_s": times, "tokens_per_sec": tokens / step_s,
          "flops_per_token": bench.flops_per_token, "model_flops_per_sec": flops,
          "ratio_to_measured_peak": flops / peak}


def measure(dims: Dims, variants: tuple[str, ...], steps: int, *, on_cpu: bool,
            profile: Optional[tuple[int, int]] = None, logdir: str = "",
            peak_n: Optional[int] = None, peak_seconds: float = 3.0,
            attention_impl: str = "auto", scan_layers: bool = True) -> dict:
  """The measured peak and every variant's step, timed alternately in this process."""
  import jax
  import jax.numpy as jnp

  from train import mfu as mfu_lib

  dtype = "float32" if on_cpu else "bfloat16"
  peak_dtype = jnp.float32 if on_cpu else jnp.bfloat16
  peak = mfu_lib.measure_matmul_peak(peak_dtype, n=peak_n or (2048 if on_cpu else 8192),
                                     seconds=peak_seconds)
  builders = {
      "llmlab": lambda: llmlab_bench(dims, dtype, attention_impl, scan_layers=scan_layers),
      "peer": lambda: peer_bench(dims, dtype),
  }
  benches = {name: builders[name]() for name in variants}
  times = time_alternating(benches, steps, profile, logdir)
  if not all(times.values()):
    raise ValueError("every timed round was profiled: raise --steps past the --profile_steps range")
  device = jax.devices()[0]
  result = {
      "device": str(device.device_kind), "platform": device.platform, "compute_dtype": dtype,
      "dims": dataclasses.asdict(dims), "measured_matmul_peak_flops": peak,
      "llmlab_model": {"attention_impl": attention_impl, "scan_layers": scan_layers},
      "peak_dtype": jnp.dtype(peak_dtype).name,
      "variants": {name: summarise(benches[name], times[name], dims, peak) for name in variants},
  }
  published = mfu_lib.published_peak(device)
  if published:
    result["published_peak_flops"] = published
    for v in result["variants"].values():
      v["ratio_to_published_peak"] = v["model_flops_per_sec"] / published
  if "llmlab" in variants and "peer" in variants:
    v = result["variants"]
    result["llmlab_over_peer_flops"] = (v["llmlab"]["model_flops_per_sec"]
                                        / v["peer"]["model_flops_per_sec"])
    result["llmlab_over_peer_tokens"] = v["llmlab"]["tokens_per_sec"] / v["peer"]["tokens_per_sec"]
  return result


def main(argv):
  del argv
  cli.setup()
  import jax

  dims = Dims(FLAGS.batch_size, FLAGS.seq_len, FLAGS.d_model, FLAGS.n_layers, FLAGS.n_heads,
              FLAGS.d_ff or 4 * FLAGS.d_model, FLAGS.vocab_size)
  variants = ("llmlab", "peer") if FLAGS.variant == "both" else (FLAGS.variant,)
  try:
    result = measure(dims, variants, FLAGS.steps, on_cpu=jax.devices()[0].platform == "cpu",
                     profile=cli.profile_steps(), logdir=os.path.join(FLAGS.out, "profile"),
                     attention_impl=FLAGS.attention_impl, scan_layers=FLAGS.scan_layers)
  except ValueError as e:
    cli.fail(e)
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, "results.json"), "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps({k: v for k, v in result.items() if k != "dims"}, indent=2, default=str))


if __name__ == "__main__":
  cli.run(main, define_flags)
