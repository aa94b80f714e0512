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

FLOPs: 4 n^2 Dh H per sequence forward (two matmuls of 2 n^2 Dh), half that when causal; the
backward is counted as 2.5x the forward (five matmuls, two of them recomputing the forward),
so forward+backward = 3.5x the forward.
"""

import json
import os
import time

from absl import flags

from train import cli
from train import plots

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script. Defined on demand, not at import, so tests and other scripts can
  import its functions beside other experiment scripts (absl refuses a flag defined twice)."""
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


def attention_flops(n: int, *, batch: int, heads: int, head_dim: int, causal: bool) -> float:
  """Forward+backward FLOPs of one call: 3.5 x (4 n^2 Dh H per sequence, halved when causal)."""
  forward = 4.0 * n * n * head_dim * heads * batch
  return 3.5 * forward * (0.5 if causal else 1.0)


def compile_fwd_bwd(impl: str, n: int, *, batch: int, heads: int, kv_heads: int, head_dim: int,
                    dtype, causal: bool):
  """grad(sum(attention(q, k, v) * cotangent)) compiled for sequences of n (not run)."""
  import jax
  import jax.numpy as jnp

  from model.attention import attention

  def loss(q, k, v, ct):
    out = attention(q, k, v, implementation=impl, causal=causal)
    return jnp.sum(out.astype(jnp.float32) * ct)

  shapes = [jax.ShapeDtypeStruct(s, dtype) for s in (
      (batch, n, heads, head_dim), (batch, n, kv_heads, head_dim), (batch, n, kv_heads, head_dim))]
  shapes.append(jax.ShapeDtypeStruct((batch, n, heads, head_dim), jnp.float32))
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*shapes).compile()


def time_interleaved(compiled: dict, n: int, *, batch: int, heads: int, kv_heads: int,
                     head_dim: int, dtype, reps: int) -> dict:
  """Min seconds per call of each compiled function (compile_fwd_bwd's), their calls interleaved
  rep by rep.

  Interleaving keeps the comparison fair on a shared machine: a burst of load from elsewhere
  slows every implementation's rep, not one implementation's whole series.
  """
  import jax
  import jax.numpy as jnp

  keys = jax.random.split(jax.random.key(n), 4)
  args = [jax.random.normal(keys[0], (batch, n, heads, head_dim), dtype),
          jax.random.normal(keys[1], (batch, n, kv_heads, head_dim), dtype),
          jax.random.normal(keys[2], (batch, n, kv_heads, head_dim), dtype),
          jax.random.normal(keys[3], (batch, n, heads, head_dim), jnp.float32)]
  for fn in compiled.values():
    jax.block_until_ready(fn(*args))  # warm-up
  times = {name: [] for name in compiled}
  for _ in range(reps):
    for name, fn in compiled.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - t0)
  return {name: min(ts) for name, ts in times.items()}


def log_log_slope(ns, values) -> float:
  """Least-squares slope of log(value) against log(n): 1 is linear growth, 2 quadratic."""
  import numpy as np

  return float(np.polyfit(np.log(ns), np.log(values), 1)[0])


def train_step_temp_bytes(impl: str, seq_len: int) -> int:
  """Compiled temporary memory of the default experiment's train step on one sequence of seq_len."""
  import jax
  import jax.numpy as jnp

  from experiments.configs import default
  from model import transformer
  from train import config as config_lib
  from train import optimizer as optimizer_lib
  from train import step as step_lib

  config = default.get_config()
  config.data.seq_len = seq_len  # model.max_seq_len follows it
  config.model.attention_impl = impl
  run = config_lib.resolve(config)
  cfg, t = run.model, run.train
  tx = optimizer_lib.make(t, t.steps)
  graphdef, abstract_params = transformer.abstract(cfg)
  state = jax.eval_shape(lambda p: step_lib.init_state(p, tx, 0), abstract_params)
  step = step_lib.make_train_step(
      step_lib.lm_loss(graphdef, -1), tx, grad_accum=1,
      lr_schedule=optimizer_lib.schedule(t.lr, t.warmup_steps, t.steps))
  batch = jax.ShapeDtypeStruct((1, seq_len + 1), jnp.int32)
  return int(jax.jit(step).lower(state, batch).compile().memory_analysis().temp_size_in_bytes)


def run_train_step(seq_len: int, out: str) -> dict:
  """Two real train steps with flash at seq_len: time per step, loss, peak resident memory."""
  import resource

  import jax

  from experiments.configs import default
  from model import transformer
  from train import config as config_lib
  from train import optimizer as optimizer_lib
  from train import step as step_lib

  config = default.get_config()
  config.data.seq_len = seq_len
  config.model.attention_impl = "flash"
  run = config_lib.resolve(config)
  cfg, t = run.model, run.train
  tx = optimizer_lib.make(t, t.steps)
  graphdef, params = transformer.create(cfg, jax.random.key(0))
  state = step_lib.init_state(params, tx, 0)
  step = jax.jit(step_lib.make_train_step(
      step_lib.lm_loss(graphdef, -1), tx, grad_accum=1,
      lr_schedule=optimizer_lib.schedule(t.lr, t.warmup_steps, t.steps)), donate_argnums=0)
  batch = jax.random.randint(jax.random.key(1), (1, seq_len + 1), 0, cfg.vocab_size)
  compiled = step.lower(state, batch).compile()
  record = {"seq_len": seq_len, "batch": 1, "model": cfg.to_dict(),
            "temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes), "steps": []}
  for _ in range(2):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    loss = float(metrics["loss"])
    record["steps"].append({"loss": loss, "time_s": time.perf_counter() - t0})
  # ru_maxrss is in KiB on Linux.
  record["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "train_step_run.json"), "w", encoding="utf-8") as f:
    json.dump(record, f, indent=2)
  return record


def main(argv):
  del argv
  cli.setup()
  if FLAGS.run_train_step_seq_len > 0:
    record = run_train_step(FLAGS.run_train_step_seq_len, FLAGS.out)
    print(cli.format_summary({k: v for k, v in record.items() if k != "model"}), flush=True)
    return
  import jax
  import jax.numpy as jnp

  from model.attention import available_implementations

  device = jax.devices()[0]
  on_cpu = device.platform == "cpu"
  sizes = [int(s) for s in FLAGS.sizes] or (
      [512, 1024, 2048, 4096, 8192, 16384] if on_cpu else [512 * 2 ** i for i in range(8)])
  dtype = jnp.dtype(FLAGS.dtype or ("float32" if on_cpu else "bfloat16"))
  impls = FLAGS.implementations or list(available_implementations())
  b, h, kv, dh = FLAGS.batch, FLAGS.heads, FLAGS.kv_heads, FLAGS.head_dim
  limit = FLAGS.reference_limit_gib * 2 ** 30

  shape = dict(batch=b, heads=h, kv_heads=kv, head_dim=dh, dtype=dtype)

  def compiled_fwd_bwd(impl: str, n: int, causal: bool):
    return compile_fwd_bwd(impl, n, causal=causal, **shape)

  def timed(compiled: dict, n: int) -> dict:
    return time_interleaved(compiled, n, reps=FLAGS.reps, **shape)

  results: dict = {impl: {} for impl in impls}
  full_time = None  # flash without the causal mask at --skip_check_n
  flops = {n: attention_flops(n, batch=b, heads=h, head_dim=dh, causal=FLAGS.causal) for n in sizes}
  for n in sizes:
    to_time = {}
    for impl in impls:
      try:
        t0 = time.perf_counter()
        compiled = compiled_fwd_bwd(impl, n, FLAGS.causal)
        compile_s = time.perf_counter() - t0
      except Exception as e:  # a kernel that rejects this shape: record why, go on
        results[impl][n] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        print(f"n={n:6d} {impl:9s} compile failed: {results[impl][n]['error']}", flush=True)
        continue
      temp = int(compiled.memory_analysis().temp_size_in_bytes)
      results[impl][n] = {"temp_bytes": temp, "compile_s": round(compile_s, 2)}
      if impl == "reference" and temp > limit:
        results[impl][n]["skipped"] = (
            f"temp memory {temp / 2**30:.1f} GiB > limit {FLAGS.reference_limit_gib} GiB")
      else:
        to_time[impl] = compiled
    if FLAGS.causal and n == FLAGS.skip_check_n and "flash" in to_time:
      to_time["flash non-causal"] = compiled_fwd_bwd("flash", n, False)
    seconds = timed(to_time, n)
    full_time = seconds.pop("flash non-causal", full_time)
    for impl in impls:
      point = results[impl].get(n, {})
      if impl in seconds:
        point.update(time_s=seconds[impl], tflops=flops[n] / seconds[impl] / 1e12)
      if "temp_bytes" in point:
        shown = (f"{point['time_s'] * 1e3:9.1f} ms" if "time_s" in point
                 else f"  skipped ({point['skipped']})")
        print(f"n={n:6d} {impl:9s} temp {point['temp_bytes'] / 2**20:10.1f} MiB {shown}", flush=True)
    del to_time

  # The fit over all n, and the slope of the last doubling: flash carries a constant (one tile of
  # scores per head), so its slope approaches 1 from below as n grows; reference's approaches 2.
  summary: dict = {"memory_slope": {}, "memory_slope_last_doubling": {}}
  for impl, points in results.items():
    ns = sorted(n for n, p in points.items() if "temp_bytes" in p)
    if len(ns) >= 2:
      mem = [points[n]["temp_bytes"] for n in ns]
      summary["memory_slope"][impl] = log_log_slope(ns, mem)
      summary["memory_slope_last_doubling"][impl] = log_log_slope(ns[-2:], mem[-2:])

  def ratio(num, den, n, key):
    p, q = results.get(num, {}).get(n, {}), results.get(den, {}).get(n, {})
    return p[key] / q[key] if key in p and key in q else None

  summary["flash_over_reference_memory"] = {n: ratio("flash", "reference", n, "temp_bytes") for n in sizes}
  summary["flash_over_reference_time"] = {n: ratio("flash", "reference", n, "time_s") for n in sizes}
  if full_time is not None:
    causal_s = results["flash"][FLAGS.skip_check_n]["time_s"]
    summary["flash_causal_over_full_time"] = {
        "n": FLAGS.skip_check_n, "causal_s": causal_s, "full_s": full_time,
        "ratio": causal_s / full_time}
  summary["train_step_temp_bytes"] = {
      n: {impl: train_step_temp_bytes(impl, int(n)) for impl in ("reference", "flash")}
      for n in FLAGS.train_seq_lens}
  if on_cpu:
    mem_8k = summary["flash_over_reference_memory"].get(8192)
    time_2k = summary["flash_over_reference_time"].get(2048)
    summary["goals"] = {
        "flash memory slope <= 1.1": summary["memory_slope"].get("flash", 9) <= 1.1,
        "flash memory at 8192 <= 1/10 of reference": mem_8k is not None and mem_8k <= 0.1,
        "flash fwd+bwd time at 2048 <= 1.5x reference": time_2k is not None and time_2k <= 1.5,
    }

  os.makedirs(FLAGS.out, exist_ok=True)
  record = {
      "device": str(device.device_kind), "platform": device.platform, "cpu_count": os.cpu_count(),
      "jax": jax.__version__, "dtype": dtype.name, "batch": b, "heads": h, "kv_heads": kv,
      "head_dim": dh, "causal": FLAGS.causal, "reps": FLAGS.reps, "time": "min over reps, seconds",
      "reference_limit_gib": FLAGS.reference_limit_gib,
      "results": {impl: {str(n): p for n, p in pts.items()} for impl, pts in results.items()},
      "summary": json.loads(json.dumps(summary, default=str)),
  }
  with open(os.path.join(FLAGS.out, "results.json"), "w", encoding="utf-8") as f:
    json.dump(record, f, indent=2)
  _plot(results, summary, record, FLAGS.out)
  print(cli.format_summary(summary), flush=True)


def _plot(results: dict, summary: dict, record: dict, out: str) -> None:
  plt = plots.pyplot()

  title = (f"{record['device']} ({record['platform']}), B={record['batch']} H={record['heads']} "
           f"K={record['kv_heads']} Dh={record['head_dim']} {record['dtype']}"
           f"{' causal' if record['causal'] else ''}, forward+backward")

  fig, ax = plt.subplots(figsize=(7, 5))
  for impl, points in results.items():
    ns = sorted(n for n, p in points.items() if "temp_bytes" in p)
    if not ns:
      continue
    mib = [points[n]["temp_bytes"] / 2 ** 20 for n in ns]
    slope = summary["memory_slope"].get(impl)
    label = impl + (f" (slope {slope:.2f})" if slope is not None else "")
    (line,) = ax.plot(ns, mib, "o-", label=label)
    skipped = [(n, m) for n, m in zip(ns, mib) if "skipped" in points[n]]
    if skipped:  # compiled but too big to run here: hollow markers
      ax.plot(*zip(*skipped), "o", mfc="white", color=line.get_color(),
              label=f"{impl}: compiled, not run (> {record['reference_limit_gib']} GiB)")
  ax.set(xscale="log", yscale="log", xlabel="sequence length n",
         ylabel="compiled temporary memory (MiB)")
  ax.set_xscale("log", base=2)
  ax.set_title(title, fontsize=8)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  plots.save(fig, os.path.join(out, "memory.png"), dpi=120)

  fig, ax = plt.subplots(figsize=(7, 5))
  for impl, points in results.items():
    ns = sorted(n for n, p in points.items() if "time_s" in p)
    if ns:
      ax.plot(ns, [points[n]["time_s"] * 1e3 for n in ns], "o-", label=impl)
  ax.set(xscale="log", yscale="log", xlabel="sequence length n", ylabel="forward+backward time (ms)")
  ax.set_xscale("log", base=2)
  ax.set_title(title, fontsize=8)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  plots.save(fig, os.path.join(out, "time.png"), dpi=120)


if __name__ == "__main__":
  cli.run(main, define_flags)
