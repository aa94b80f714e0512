"""The measurements that matter on an accelerator, in one process, into one results.json.

  python -m experiments.accelerator --out=results/accelerator [--smoke] [--sections=...]

On whatever backend JAX finds (a GPU, a TPU, or the CPU), each section measured here, beside a
matmul peak measured in the same process:
  train_step  llmlab's train step and the plain peer step (experiments/bench_train.py) at
              GPU-sized dims, timed alternately: model FLOP/s, tokens/s, ratio to the measured
              matmul peak (bfloat16 on accelerators, float32 on a CPU) and to the published one
  attention   forward+backward time and compiled memory of every attention implementation this
              backend has (reference, flash; cudnn, pallas on GPU) against sequence length
              (experiments/attention_bench.py's functions)
  decode      greedy decode tokens/s of a randomly initialised model at a long context, against
              the bound that memory bandwidth measured here sets: bytes read per step (weights
              and the whole cache) over bandwidth (experiments/decode_bench.py's functions)
  zero        the compiled train step's peak memory per device at ZeRO stages 0-3 on the devices
              there are (experiments/zero_memory.py's functions; on one device every stage holds
              everything, so they differ only with several)
Each section is guarded: an exception is recorded under its name and the next section runs.
results.json is rewritten after every section, so a run cut short keeps what it measured.

--smoke shrinks every size so the whole script runs on a CPU in seconds (the test suite runs it).
It imports neither grain nor ml_collections nor tokenizers: it runs where only jax, flax, optax,
orbax and absl are installed (docs/training.md says how to carry wheels to a device machine).
"""

from __future__ import annotations

import json
import os
import time
import traceback
from typing import Any, Callable

from absl import flags

from experiments import common

FLAGS = flags.FLAGS
SECTIONS = ("train_step", "attention", "decode", "zero")


def define_flags() -> None:
  """The flags of this script. Defined on demand, not at import, so tests and other scripts can
  import its functions beside other experiment scripts (absl refuses a flag defined twice)."""
  flags.DEFINE_string("out", "results/accelerator", "Output directory for results.json.")
  flags.DEFINE_bool("smoke", False, "Tiny sizes everywhere: a CPU runs it all in seconds.")
  flags.DEFINE_list("sections", list(SECTIONS), f"Sections to run, of {', '.join(SECTIONS)}.")


def sizes(smoke: bool) -> dict[str, Any]:
  """Every size the sections use; the smoke sizes only exercise the code."""
  if smoke:
    return {
        "train_dims": dict(batch_size=2, seq_len=32, d_model=32, n_layers=1, n_heads=2, d_ff=64,
                           vocab_size=128),
        "train_steps": 1, "peak_n": 128, "peak_seconds": 0.1,
        "attention": dict(ns=[128], batch=1, heads=2, kv_heads=2, head_dim=16, reps=1),
        "decode": dict(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64, vocab=128,
                       batch=1, context=32, steps=256, repeats=3, bandwidth_bytes=1 << 22),
        # Stages 0 and 3 only: the same code path as all four, at half the compile time.
        "zero": dict(d_model=32, n_layers=1, n_heads=2, d_ff=64, vocab=128, batch=2, seq_len=16,
                     stages=(0, 3)),
    }
  return {
      # About 0.8B parameters; float32 master weights and Adam moments, bfloat16 compute.
      "train_dims": dict(batch_size=8, seq_len=2048, d_model=2048, n_layers=16, n_heads=16,
                         d_ff=8192, vocab_size=32768),
      "train_steps": 10, "peak_n": 8192, "peak_seconds": 3.0,
      "attention": dict(ns=[1024, 2048, 4096, 8192, 16384, 32768], batch=1, heads=16,
                        kv_heads=16, head_dim=128, reps=5),
      "decode": dict(d_model=2048, n_layers=16, n_heads=16, n_kv_heads=4, d_ff=8192, vocab=32768,
                     batch=1, context=4096, steps=64, repeats=3, bandwidth_bytes=1 << 30),
      "zero": dict(d_model=1024, n_layers=8, n_heads=8, d_ff=4096, vocab=32768, batch=8,
                   seq_len=1024, stages=(0, 1, 2, 3)),
  }


def section_train_step(s: dict, on_cpu: bool) -> dict:
  from experiments import bench_train

  dims = bench_train.Dims(**s["train_dims"])
  return bench_train.measure(dims, ("llmlab", "peer"), s["train_steps"], on_cpu=on_cpu,
                             peak_n=s["peak_n"], peak_seconds=s["peak_seconds"])


def section_attention(s: dict, on_cpu: bool) -> dict:
  import jax.numpy as jnp

  from experiments import attention_bench
  from model.attention import available_implementations

  a = dict(s["attention"])
  ns, reps = a.pop("ns"), a.pop("reps")
  dtype = jnp.float32 if on_cpu else jnp.bfloat16
  shape = dict(a, dtype=dtype)
  rows = []
  for n in ns:
    compiled = {}
    for impl in available_implementations():
      row = {"implementation": impl, "n": n}
      try:
        compiled[impl] = attention_bench.compile_fwd_bwd(impl, n, causal=True, **shape)
        row["temp_bytes"] = int(compiled[impl].memory_analysis().temp_size_in_bytes)
      except Exception as e:  # noqa: BLE001 - a kernel that rejects this shape: say why, go on
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
      rows.append(row)
    seconds = attention_bench.time_interleaved(compiled, n, reps=reps, **shape) if compiled else {}
    flops = attention_bench.attention_flops(n, batch=a["batch"], heads=a["heads"],
                                            head_dim=a["head_dim"], causal=True)
    for row in rows[-len(available_implementations()):]:
      if row["implementation"] in seconds:
        row["time_s"] = seconds[row["implementation"]]
        row["tflops"] = flops / row["time_s"] / 1e12
  return {"dtype": jnp.dtype(dtype).name, **a, "reps": reps, "time": "min over reps", "rows": rows}


def section_decode(s: dict, on_cpu: bool) -> dict:
  import jax

  from experiments import decode_bench
  from model import transformer
  from model.config import ModelConfig

  d = s["decode"]
  cfg = ModelConfig(
      vocab_size=d["vocab"], d_model=d["d_model"], n_layers=d["n_layers"], n_heads=d["n_heads"],
      n_kv_heads=d["n_kv_heads"], d_ff=d["d_ff"], max_seq_len=d["context"] + d["steps"] + 1,
      dtype="float32" if on_cpu else "bfloat16", param_dtype="float32" if on_cpu else "bfloat16",
      scan_layers=False, attention_impl="reference")  # unstacked: decoding's layout
  graphdef, params = transformer.create(cfg, jax.random.key(0))
  step_s, cache_bytes = decode_bench.step_seconds(
      cfg, graphdef, params, d["batch"], d["context"], d["steps"], d["repeats"])
  if step_s <= 0:  # (t(1 + steps) - t(1)) / steps: noise larger than the steps' time
    raise ValueError(f"decode steps too short to time ({step_s:.3g} s); raise the step count")
  weight_bytes = decode_bench.param_bytes(params)
  bandwidth = decode_bench.measure_bandwidth(d["bandwidth_bytes"], max(d["repeats"], 3))
  per_step = weight_bytes + cache_bytes  # every step reads the weights and the whole cache
  bound_tokens = d["batch"] * bandwidth["copy_bytes_per_s"] / per_step
  tokens = d["batch"] / step_s
  return {"model": cfg.to_dict(), "batch": d["batch"], "context": d["context"],
          "weight_bytes": weight_bytes, "cache_bytes": cache_bytes, "step_seconds": step_s,
          "tokens_per_s": tokens, "bandwidth": bandwidth,
          "bound_tokens_per_s": bound_tokens, "fraction_of_bound": tokens / bound_tokens,
          "note": "random weights and cache; bound = batch x copy bandwidth / bytes read per step"}


def section_zero(s: dict, on_cpu: bool) -> dict:
  import jax

  from experiments import bench_train, zero_memory
  from model.config import ModelConfig
  from sharding import zero

  z = s["zero"]
  model_cfg = ModelConfig(
      vocab_size=z["vocab"], d_model=z["d_model"], n_layers=z["n_layers"], n_heads=z["n_heads"],
      n_kv_heads=z["n_heads"], d_ff=z["d_ff"], max_seq_len=z["seq_len"],
      dtype="float32" if on_cpu else "bfloat16")
  n = jax.device_count()
  batch = -(-z["batch"] // n) * n  # rows split evenly over the devices
  rows = []
  for stage in z["stages"]:
    run, compiled = zero_memory._compile(model_cfg, bench_train.train_settings(), stage, n, batch,
                                         z["seq_len"])
    whole = zero.unpartitioned_bytes(run.abstract_state)
    rows.append({"stage": stage, "compiled": zero_memory._memory(compiled),
                 "formula": zero.formula_bytes(stage, whole["params"], whole["grads"],
                                               whole["opt_state"], n)})
  return {"n_devices": n, "model": model_cfg.to_dict(), "batch": batch, "seq_len": z["seq_len"],
          "stages": rows}


SECTION_FNS: dict[str, Callable[[dict, bool], dict]] = {
    "train_step": section_train_step, "attention": section_attention, "decode": section_decode,
    "zero": section_zero,
}


def run_sections(names: list[str], smoke: bool, out: str) -> dict:
  """Runs each named section, guarded; writes out/results.json after every one."""
  import jax

  device = jax.devices()[0]
  on_cpu = device.platform == "cpu"
  result: dict[str, Any] = {
      "device": str(device.device_kind), "platform": device.platform,
      "device_count": jax.device_count(), "jax": jax.__version__, "smoke": smoke,
      "sections": {}, "errors": {}}
  s = sizes(smoke)
  os.makedirs(out, exist_ok=True)
  for name in names:
    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
      section = SECTION_FNS[name](s, on_cpu)
      section["wall_s"] = time.perf_counter() - t0
      section["process_cpu_s"] = time.process_time() - cpu0  # wall_s is noisy on a busy machine
      result["sections"][name] = section
      print(f"[{name}] done in {section['wall_s']:.1f} s ({section['process_cpu_s']:.1f} s CPU)",
            flush=True)
    except Exception as e:  # noqa: BLE001 - one section's failure must not cost the others
      result["errors"][name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                                if str(e) else type(e).__name__,
                                "traceback": traceback.format_exc()[-3000:]}
      print(f"[{name}] failed: {result['errors'][name]['error']}", flush=True)
    with open(os.path.join(out, "results.json"), "w") as f:
      json.dump(result, f, indent=2, default=str)
  return result


def main(argv):
  del argv
  common.setup()
  unknown = [n for n in FLAGS.sections if n not in SECTIONS]
  if unknown:
    common.fail(ValueError(f"--sections: unknown {', '.join(unknown)}; "
                           f"choose from {', '.join(SECTIONS)}"))
  result = run_sections(list(FLAGS.sections), FLAGS.smoke, FLAGS.out)
  headline = {"device": result["device"], "errors": list(result["errors"])}
  train = result["sections"].get("train_step", {}).get("variants", {}).get("llmlab")
  if train:
    headline["train_step_ratio_to_peak"] = train["ratio_to_measured_peak"]
  decode = result["sections"].get("decode")
  if decode:
    headline["decode_fraction_of_bound"] = decode["fraction_of_bound"]
  print(common.format_summary(headline), flush=True)


if __name__ == "__main__":
  common.run(main, define_flags)
