"""Train-step speed: llmlab's step and a plain peer step timed alternately, against the matmul peak.

The two steps are timed step for step in turn, so that a busy machine slows both alike and their
ratio holds. Each step's model FLOPs are its own architecture's (model.config.flops_per_token for
llmlab's SwiGLU blocks, peer_model.flops_per_token for the peer's GELU MLP). Used by
experiments.bench_train and by experiments.accelerator's train_step section.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from model import transformer
from model.config import ModelConfig, count_params, flops_per_token
from train import mfu as mfu_lib
from train import optimizer as optimizer_lib
from train import step as step_lib
from train.config import TrainSettings
from train.studies import peer_model as peer


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


def train_settings() -> TrainSettings:
  """The train.* settings of the benchmarks' optimizer and sharded step."""
  return TrainSettings(lr=1e-3, warmup_steps=10, weight_decay=0.1, grad_clip=1.0, steps=1000,
                       seed=0, grad_accum=1)


def peer_bench(dims: Dims, dtype: str) -> Bench:
  """The plain Flax linen peer's step (train/studies/peer_model.py) at the same dims."""
  cfg = peer.PeerConfig(dims.vocab_size, dims.d_model, dims.n_layers, dims.n_heads, dims.d_ff,
                        dims.seq_len, dtype)
  step, state = peer.make_train_step(cfg, jax.random.key(0))
  return Bench(step, state, _batch(dims), peer.flops_per_token(cfg))


def _batch(dims: Dims) -> jax.Array:
  """Random tokens_Bx(L+1): inputs and their next-token targets."""
  return jax.random.randint(jax.random.key(1), (dims.batch_size, dims.seq_len + 1), 0,
                            dims.vocab_size)


def time_alternating(benches: dict[str, Bench], steps: int,
                     profile: Optional[tuple[int, int]] = None, logdir: str = "",
                     ) -> dict[str, list[float]]:
  """Seconds of each timed step per bench, the benches stepped in turn within every round.

  One warm-up step each first (it compiles). profile: rounds (first, last), counted from 1, run
  under the JAX profiler into logdir and left out of the times returned.
  """
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
  """Median step time, tokens/s, model FLOP/s and its ratio to the measured peak."""
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


def measure_sizes(s: dict, on_cpu: bool) -> dict:
  """experiments.accelerator's train_step section: measure() at every size of s["train_dims"]
  (those in s["train_sizes"], when it names any), the peer beside the first size only (its
  compile would cost minutes more at the larger ones)."""
  sizes_out = []
  for i, d in enumerate(s["train_dims"]):
    if s.get("train_sizes") and i not in s["train_sizes"]:
      continue
    d = dict(d)
    scan_layers = d.pop("scan_layers", True)
    dims = Dims(**d)
    variants = ("llmlab", "peer") if i == 0 else ("llmlab",)  # the peer at the first size only
    r = measure(dims, variants, s["train_steps"], on_cpu=on_cpu,
                peak_n=s["peak_n"], peak_seconds=s["peak_seconds"], scan_layers=scan_layers)
    r["size_index"] = i
    r["params"] = count_params(ModelConfig(
        vocab_size=dims.vocab_size, d_model=dims.d_model, n_layers=dims.n_layers,
        n_heads=dims.n_heads, n_kv_heads=dims.n_heads, d_ff=dims.d_ff))["total"]
    sizes_out.append(r)
  # The first size's keys stay at the top level, where the smoke test and the docs read them.
  return {**sizes_out[0], "sizes": sizes_out}
