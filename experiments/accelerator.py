"""The measurements that matter on an accelerator, in one process, into one results.json.

  python -m experiments.accelerator --out=results/accelerator [--smoke] [--sections=...]

On whatever backend JAX finds (a GPU, a TPU, or the CPU), each section measured here, beside a
matmul peak measured in the same process:
  train_step  llmlab's train step at 0.34B and 0.89B parameters (the larger also at twice the
              batch and with its layers unrolled), the first timed alternately with the plain
              peer step (experiments/bench_train.py): model
              FLOP/s, tokens/s, ratio to the measured matmul peak (bfloat16 on accelerators,
              float32 on a CPU) and to the published one
  attention   forward+backward time and compiled memory of every attention implementation this
              backend has (reference, flash; cudnn, pallas on GPU) against sequence length
              (experiments/attention_bench.py's functions)
  decode      greedy decode tokens/s of a randomly initialised model at a long context, at batch
              1 and 8, against the bound that memory bandwidth measured here sets: bytes read per
              step (weights and the whole cache) over bandwidth (experiments/decode_bench.py's
              functions)
  speculative the costs that set speculative decoding's speed here: a verification pass over
              gamma + 1 tokens and a draft step (a model 28x smaller) against a one-token target
              step, and the measured time of one round of model/speculative.py's loop; from them,
              the speedup at acceptance rates alpha (random weights accept almost nothing, so
              the speedup is computed for given alphas, not observed: see docs/inference.md)
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

from train import cli

FLAGS = flags.FLAGS
SECTIONS = ("train_step", "attention", "decode", "speculative", "zero")


def define_flags() -> None:
  """The flags of this script. Defined on demand, not at import, so tests and other scripts can
  import its functions beside other experiment scripts (absl refuses a flag defined twice)."""
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


def section_train_step(s: dict, on_cpu: bool) -> dict:
  from experiments import bench_train
  from model.config import ModelConfig, count_params

  sizes_out = []
  for i, d in enumerate(s["train_dims"]):
    if s.get("train_sizes") and i not in s["train_sizes"]:
      continue
    d = dict(d)
    scan_layers = d.pop("scan_layers", True)
    dims = bench_train.Dims(**d)
    variants = ("llmlab", "peer") if i == 0 else ("llmlab",)  # the peer at the first size only
    r = bench_train.measure(dims, variants, s["train_steps"], on_cpu=on_cpu,
                            peak_n=s["peak_n"], peak_seconds=s["peak_seconds"],
                            scan_layers=scan_layers)
    r["size_index"] = i
    r["params"] = count_params(ModelConfig(
        vocab_size=dims.vocab_size, d_model=dims.d_model, n_layers=dims.n_layers,
        n_heads=dims.n_heads, n_kv_heads=dims.n_heads, d_ff=dims.d_ff))["total"]
    sizes_out.append(r)
  # The first size's keys stay at the top level, where the smoke test and the docs read them.
  return {**sizes_out[0], "sizes": sizes_out}


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


def _decode_model(d: dict, float32: bool, **overrides):
  """(cfg, graphdef, params): a randomly initialised model in decoding's (unstacked) layout, in
  float32 or else bfloat16."""
  import jax

  from model import transformer
  from model.config import ModelConfig

  dims = {k: d[k] for k in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff")}
  dims.update(overrides)
  cfg = ModelConfig(
      vocab_size=d["vocab"], max_seq_len=d["context"] + d["steps"] + 1,
      dtype="float32" if float32 else "bfloat16", param_dtype="float32" if float32 else "bfloat16",
      scan_layers=False, attention_impl="reference", **dims)
  graphdef, params = transformer.create(cfg, jax.random.key(0))
  return cfg, graphdef, params


def section_decode(s: dict, on_cpu: bool) -> dict:
  from experiments import decode_bench

  d = s["decode"]
  cfg, graphdef, params = _decode_model(d, on_cpu)
  weight_bytes = decode_bench.param_bytes(params)
  bandwidth = decode_bench.measure_bandwidth(d["bandwidth_bytes"], max(d["repeats"], 3))
  rows = []
  for batch in d["batches"]:
    step_s, cache_bytes = decode_bench.step_seconds(
        cfg, graphdef, params, batch, d["context"], d["steps"], d["repeats"])
    if step_s <= 0:  # (t(1 + steps) - t(1)) / steps: noise larger than the steps' time
      raise ValueError(f"decode steps too short to time ({step_s:.3g} s); raise the step count")
    per_step = weight_bytes + cache_bytes  # every step reads the weights and the whole cache
    bound_tokens = batch * bandwidth["copy_bytes_per_s"] / per_step
    tokens = batch / step_s
    rows.append({"batch": batch, "cache_bytes": cache_bytes, "step_seconds": step_s,
                 "tokens_per_s": tokens, "bound_tokens_per_s": bound_tokens,
                 "fraction_of_bound": tokens / bound_tokens})
  return {"model": cfg.to_dict(), "context": d["context"], "weight_bytes": weight_bytes,
          "bandwidth": bandwidth, "rows": rows,
          # Batch 1's numbers at the top level, where the smoke test and the docs read them.
          **{k: rows[0][k] for k in ("batch", "tokens_per_s", "bound_tokens_per_s",
                                     "fraction_of_bound")},
          "note": "random weights and cache; bound = batch x copy bandwidth / bytes read per step"}


def _greedy_identical_in_float32(d: dict, sp: dict, prompt, keys) -> bool:
  """Whether speculative greedy decoding emits the target's greedy tokens with float32 models of
  the section's shapes (random weights)."""
  import numpy as np

  from model import generation, sampling, speculative

  greedy = sampling.SamplingConfig(temperature=0.0)
  n = sp["new_tokens"]
  tcfg, tdef, tparams = _decode_model(d, True)
  dcfg, ddef, dparams = _decode_model(d, True, **sp["draft"])
  spec = speculative.make_generate(tcfg, tdef, dcfg, ddef,
                                   speculative.SpeculativeSpec(sp["gamma"], n, -1, greedy))
  base = generation.make_generate(tcfg, tdef, generation.DecodeSpec(n, -1, greedy))
  return bool(np.array_equal(np.asarray(spec(tparams, dparams, *prompt, keys).tokens_BxN),
                             np.asarray(base(tparams, *prompt, keys).tokens_BxN)))


def section_speculative(s: dict, on_cpu: bool) -> dict:
  """Speculative decoding's costs on this device, and the speedup they give at given alphas.

  Randomly initialised models accept almost no draft token, so the speedup is not observed here
  but computed from three measured times: the one-token target step t1, the verification pass
  over gamma + 1 tokens, and one whole round of model/speculative.py's loop (gamma draft steps,
  the pass, acceptance and bookkeeping), t_round. A round emits E(alpha, gamma) = (1 -
  alpha^(gamma+1)) / (1 - alpha) tokens on average, so speedup(alpha) = E(alpha, gamma) t1 /
  t_round. The loop is also checked to emit exactly the target's greedy tokens.
  """
  import jax
  import numpy as np

  from experiments import decode_bench
  from model import generation, sampling, speculative

  d, sp = s["decode"], s["speculative"]
  g = sp["gamma"]
  tcfg, tdef, tparams = _decode_model(d, on_cpu)
  dcfg, ddef, dparams = _decode_model(d, on_cpu, **sp["draft"])
  pass_s = {t: decode_bench.pass_seconds(tcfg, tdef, tparams, t, sp["passes"], sp["repeats"])
            for t in (1, g + 1)}
  draft_step_s = decode_bench.pass_seconds(dcfg, ddef, dparams, 1, sp["passes"], sp["repeats"])
  prompt = generation.pad_prompts([list(range(1, 17))], 0)
  keys = jax.random.split(jax.random.key(0), 1)
  greedy = sampling.SamplingConfig(temperature=0.0)
  n = sp["new_tokens"]
  spec_fn = speculative.make_generate(tcfg, tdef, dcfg, ddef,
                                      speculative.SpeculativeSpec(g, n, -1, greedy))
  base_fn = generation.make_generate(tcfg, tdef, generation.DecodeSpec(n, -1, greedy))
  out = jax.block_until_ready(spec_fn(tparams, dparams, *prompt, keys))
  base = jax.block_until_ready(base_fn(tparams, *prompt, keys))
  spec_s = decode_bench.best_time(
      lambda: jax.block_until_ready(spec_fn(tparams, dparams, *prompt, keys)), sp["repeats"])
  same = np.asarray(out.tokens_BxN)[0] == np.asarray(base.tokens_BxN)[0]
  # Greedy verification accepts exactly the target's argmax, so the outputs can differ only
  # where a pass over gamma + 1 tokens and a one-token step round differently and the top two
  # logits are that close (bfloat16, random weights). The same check in float32 tells which.
  same32 = bool(same.all()) if on_cpu else _greedy_identical_in_float32(d, sp, prompt, keys)
  rounds = int(out.rounds_B.sum())
  t_round = spec_s / rounds
  t1 = pass_s[1]
  alphas = (0.6, 0.7, 0.8, 0.9)
  return {
      "target": tcfg.to_dict(), "draft": dcfg.to_dict(),
      "target_weight_bytes": decode_bench.param_bytes(tparams),
      "draft_weight_bytes": decode_bench.param_bytes(dparams),
      "gamma": g, "one_token_step_s": t1, "verify_pass_s": pass_s[g + 1],
      "verify_pass_over_one_token_step": pass_s[g + 1] / t1,
      "draft_step_over_target_step": draft_step_s / t1,
      "round_s": t_round, "round_over_one_token_step": t_round / t1,
      "rounds": rounds, "alpha_observed_random_weights": speculative.acceptance_rate(out),
      "same_tokens_as_target_greedy": bool(same.all()),
      "first_differing_token": int(np.argmin(same)) if not same.all() else None,
      "same_tokens_as_target_greedy_float32": bool(same32),
      "speedup_at_alpha": {str(a): speculative.expected_tokens_per_call(a, g) * t1 / t_round
                           for a in alphas},
      "note": "speedup computed from measured times at the given alphas, not observed"}


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


def plot(result: dict, out: str) -> None:
  """accelerator.png: one panel per measured section (train, attention, decode, speculative)."""
  from train import plots

  plt = plots.pyplot()
  sec = result["sections"]
  fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
  ax = axes[0]
  for i, size in enumerate(sec.get("train_step", {}).get("sizes", [])):
    for j, (name, v) in enumerate(size["variants"].items()):
      label = f"{size['params'] / 1e9:.2f}B {name}"
      ax.bar(i * 3 + j, v["ratio_to_measured_peak"], color=f"C{j}")
      ax.text(i * 3 + j, v["ratio_to_measured_peak"], label, ha="center", va="bottom", fontsize=7)
  ax.set(title="train step: model FLOP/s / measured matmul peak", xticks=[])
  ax = axes[1]
  rows = [r for r in sec.get("attention", {}).get("rows", []) if "time_s" in r]
  for impl in sorted({r["implementation"] for r in rows}):
    pts = [(r["n"], r["time_s"] * 1e3) for r in rows if r["implementation"] == impl]
    ax.loglog(*zip(*pts), "o-", label=impl, base=2)
  ax.set(title="attention fwd+bwd (causal)", xlabel="sequence length", ylabel="ms")
  ax.legend(fontsize=7)
  ax = axes[2]
  dec = sec.get("decode", {}).get("rows", [])
  if dec:
    xs = range(len(dec))
    ax.bar([x - 0.2 for x in xs], [r["tokens_per_s"] for r in dec], 0.4, label="measured")
    ax.bar([x + 0.2 for x in xs], [r["bound_tokens_per_s"] for r in dec], 0.4,
           label="bandwidth bound")
    ax.set(xticks=list(xs), xticklabels=[f"batch {r['batch']}" for r in dec])
    ax.legend(fontsize=7)
  ax.set(title="decode tokens/s", yscale="log")
  ax = axes[3]
  spec = sec.get("speculative")
  if spec:
    alphas = sorted(spec["speedup_at_alpha"], key=float)
    ax.plot([float(a) for a in alphas], [spec["speedup_at_alpha"][a] for a in alphas], "o-")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set(title=f"speculative, gamma={spec['gamma']}: speedup from measured costs",
           xlabel="acceptance rate alpha", ylabel="speedup")
  fig.suptitle(f"{result['device']} (jax {result['jax']})", fontsize=9)
  fig.tight_layout()
  plots.save(fig, os.path.join(out, "accelerator.png"), 110)


SECTION_FNS: dict[str, Callable[[dict, bool], dict]] = {
    "train_step": section_train_step, "attention": section_attention, "decode": section_decode,
    "speculative": section_speculative, "zero": section_zero,
}


def run_sections(names: list[str], smoke: bool, out: str,
                 train_sizes: tuple[int, ...] = ()) -> dict:
  """Runs each named section, guarded; writes out/results.json after every one."""
  import jax

  device = jax.devices()[0]
  on_cpu = device.platform == "cpu"
  result: dict[str, Any] = {
      "device": str(device.device_kind), "platform": device.platform,
      "device_count": jax.device_count(), "jax": jax.__version__, "smoke": smoke,
      # Set by the caller to try XLA options (command buffers for the decode loop, say).
      "xla_flags": os.environ.get("XLA_FLAGS", ""), "sections": {}, "errors": {}}
  s = dict(sizes(smoke), train_sizes=train_sizes)
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
  try:
    plot(result, out)
  except Exception as e:  # noqa: BLE001 - a plot must not cost the measurements
    print(f"plot failed: {type(e).__name__}: {e}", flush=True)
  return result


def main(argv):
  del argv
  cli.setup()
  if FLAGS.replot:
    with open(os.path.join(FLAGS.out, "results.json")) as f:
      plot(json.load(f), FLAGS.out)
    return
  unknown = [n for n in FLAGS.sections if n not in SECTIONS]
  if unknown:
    cli.fail(ValueError(f"--sections: unknown {', '.join(unknown)}; "
                           f"choose from {', '.join(SECTIONS)}"))
  try:
    train_sizes = tuple(int(i) for i in FLAGS.train_sizes)
  except ValueError:
    cli.fail(ValueError(f"--train_sizes: expected integers, got {','.join(FLAGS.train_sizes)}"))
  result = run_sections(list(FLAGS.sections), FLAGS.smoke, FLAGS.out, train_sizes)
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
