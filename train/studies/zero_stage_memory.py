"""The compiled train step's memory per device under ZeRO stages 0-3, measured and bisected.

Measured: for a (stage, N devices), the step compiled for a data-parallel mesh of N and trained
for a few steps: XLA's memory_analysis() of the compiled step (its peak), the ZeRO formula
(P + G + O split per the stage), the train state device 0 holds, the residual. Compiled only: the
largest model of a Llama-shaped family whose step fits a memory budget, k bisected on the
compiled step's peak (nothing is allocated: the state is abstract). Used by
experiments.zero_memory and experiments.accelerator's zero section.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from model.config import ModelConfig, count_params
from sharding import memory as memory_lib
from sharding import mesh as mesh_lib
from sharding import zero
from train import plots
from train import state as state_lib
from train.config import TrainSettings
from train.studies.train_speed import train_settings


def compile_step(model_cfg: ModelConfig, train_cfg: TrainSettings, stage: int, n: int,
                 batch: int, seq_len: int):
  """(ShardedTraining, compiled step) on the first n devices, from abstract shapes only."""
  mesh = mesh_lib.make_mesh({"data": n}, devices=jax.devices()[:n])
  run = state_lib.make_sharded_training(model_cfg, train_cfg, mesh, stage, pad_id=-1)
  struct = jax.ShapeDtypeStruct((batch, seq_len + 1), jnp.int32, sharding=run.batch_sharding)
  return run, run.train_step.lower(run.abstract_state, struct).compile()


def step_memory(compiled) -> dict:
  """Bytes per device of a compiled step: its peak, and memory_analysis()'s parts."""
  m = compiled.memory_analysis()
  return {"peak": memory_lib.step_bytes(compiled), "arguments": int(m.argument_size_in_bytes),
          "outputs": int(m.output_size_in_bytes), "temporaries": int(m.temp_size_in_bytes),
          "aliased": int(m.alias_size_in_bytes)}


def measure(config, stage: int, n: int, steps: int) -> dict:
  """One (stage, N) of an experiment config: compiled memory, the formula, the state on device
  0, step time."""
  model_cfg = ModelConfig.from_dict(config.model.to_dict())
  t = TrainSettings.from_config(config.train)
  run, compiled = compile_step(model_cfg, t, stage, n, t.batch_size, config.data.seq_len)
  state = run.init(jax.random.key(t.seed))
  rng = np.random.default_rng(0)
  times = []
  for _ in range(steps):
    batch = jax.device_put(
        rng.integers(0, model_cfg.vocab_size, (t.batch_size, config.data.seq_len + 1), np.int32),
        run.batch_sharding)
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  whole = zero.unpartitioned_bytes(run.abstract_state)
  formula = zero.formula_bytes(stage, whole["params"], whole["grads"], whole["opt_state"], n)
  device = run.mesh.devices.flat[0]
  memory = step_memory(compiled)
  layer_bytes = sum(x.size * x.dtype.itemsize // model_cfg.n_layers
                    for x in jax.tree.leaves(run.abstract_state["params"]["blocks"]))
  return {
      "stage": stage, "n_devices": n, "compiled": memory, "formula": formula,
      "resting": {"params": zero.bytes_on_device(state["params"], device),
                  "opt_state": zero.bytes_on_device(state["opt_state"], device)},
      "residual": memory["peak"] - formula["total"], "layer_param_bytes": layer_bytes,
      "unpartitioned": whole, "step_time_s": float(np.median(times[1:] or times)),
      "loss": float(metrics["loss"]),
  }


def llama_shaped(k: int, base) -> ModelConfig:
  """The bisected model family: d_model 128 k, k layers of k heads (head_dim 128), d_ff 8/3
  d_model rounded up to 256 (Llama 2 7B is k = 32: 6.7B parameters here with its 32,000
  vocabulary). base: an experiment config, whose other model.* settings are kept."""
  d = 128 * k
  fields = dict(base.model.to_dict(), d_model=d, n_layers=k, n_heads=k, n_kv_heads=k,
                d_ff=-(-8 * d // 3 // 256) * 256, vocab_size=32000, max_seq_len=2048,
                remat="full", dtype="bfloat16", param_dtype="float32", scan_layers=True)
  return ModelConfig.from_dict(fields)


def probe(config, stage: int, n: int, k: int) -> dict:
  """One compiled (stage, N, k) of the Llama-shaped family: its peak per device."""
  model_cfg = llama_shaped(k, config)
  start = time.perf_counter()
  _, compiled = compile_step(model_cfg, TrainSettings.from_config(config.train), stage, n, n,
                             model_cfg.max_seq_len)
  return {"stage": stage, "n_devices": n, "k": k, "d_model": model_cfg.d_model,
          "n_layers": model_cfg.n_layers, "params": count_params(model_cfg)["total"],
          "compiled": step_memory(compiled), "compile_s": time.perf_counter() - start}


def largest_fit(probes: dict, run_probe: Callable[[int], dict], stage: int, n: int,
                budget: float) -> dict:
  """Bisects k (1..128) for the largest model of the family whose step fits `budget` bytes.

  probes: {(stage, n, k): record}, filled by run_probe(k) as needed. Returns the largest fitting
  record (or {} if even k = 1 does not fit) and the smallest that did not, as bounds."""
  def fits(k):
    if (stage, n, k) not in probes:
      probes[(stage, n, k)] = run_probe(k)
    return probes[(stage, n, k)]["compiled"]["peak"] <= budget

  lo, hi = 0, 129  # fits(lo) is known true (or lo = 0), fits(hi) false (or hi = 129)
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
  return {"largest": probes.get((stage, n, lo), {}), "first_over": probes.get((stage, n, hi), {})}


def measure_missing(config, results: dict, stages: list[int], counts: list[int], steps: int,
                    save: Callable[[], None]) -> None:
  """measure() every (stage, N) not yet in results["runs"], appending each record and calling
  save() after it."""
  done = {(r["stage"], r["n_devices"]) for r in results["runs"]}
  for stage in stages:
    for n in counts:
      if (stage, n) in done:
        continue
      record = measure(config, stage, n, steps)
      results["runs"].append(record)
      save()
      print(f"stage {stage} N={n}: compiled peak {record['compiled']['peak'] / 2**20:.1f} MiB "
            f"per device (formula {record['formula']['total'] / 2**20:.1f}), "
            f"{record['step_time_s'] * 1e3:.0f} ms/step", flush=True)


def fit_all(config, results: dict, stages: list[int], counts: list[int], budget: float,
            save: Callable[[], None]) -> None:
  """largest_fit() per (N, stage) into results["fits"], reusing results["probes"] and saving
  after every new probe."""
  probes = {(p["stage"], p["n_devices"], p["k"]): p for p in results.get("probes", [])}
  fits = []
  for n in counts:
    for stage in stages:
      def run_probe(k, stage=stage, n=n):
        record = probe(config, stage, n, k)
        results["probes"] = list(probes.values()) + [record]
        save()
        print(f"  probe stage {stage} N={n}: {record['params'] / 1e9:.2f}B parameters, "
              f"peak {record['compiled']['peak'] / 1e9:.1f} GB", flush=True)
        return record

      fit = largest_fit(probes, run_probe, stage, n, budget)
      fits.append({"stage": stage, "n_devices": n, **fit})
      print(f"stage {stage} on {n} devices: largest fit "
            f"{fit['largest'].get('params', 0) / 1e9:.2f}B parameters", flush=True)
  results["probes"] = list(probes.values())
  results["fits"] = fits


def plot(results: dict, out_dir: str) -> None:
  """out_dir/zero_memory.png: compiled peak and formula against N per stage; the largest fits."""
  plt = plots.pyplot()
  runs = results["runs"]
  stages = sorted({r["stage"] for r in runs})
  counts = sorted({r["n_devices"] for r in runs})
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  mib = 1 / 2**20
  ax = axes[0]
  for stage in stages:
    by_n = {r["n_devices"]: r for r in runs if r["stage"] == stage}
    ns = [n for n in counts if n in by_n]
    line, = ax.plot(ns, [by_n[n]["compiled"]["peak"] * mib for n in ns], "o-",
                    label=f"stage {stage}: compiled step peak")
    ax.plot(ns, [by_n[n]["formula"]["total"] * mib for n in ns], "--", color=line.get_color(),
            alpha=0.6, label=f"stage {stage}: ZeRO formula (P+G+O)")
  ax.set(xscale="log", yscale="log", xticks=counts, xticklabels=counts,
         xlabel="data-parallel devices N", ylabel="MiB per device",
         title=f"compiled train step, {results['params'] / 1e6:.1f}M parameters")
  ax.minorticks_off()
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  ax = axes[1]
  fits = results.get("fits", [])
  if fits:
    ns = sorted({f["n_devices"] for f in fits})
    width = 0.8 / len(ns)
    for i, n in enumerate(ns):
      xs = [f["stage"] + (i - (len(ns) - 1) / 2) * width for f in fits if f["n_devices"] == n]
      ys = [f["largest"].get("params", 0) / 1e9 for f in fits if f["n_devices"] == n]
      ax.bar(xs, ys, width, label=f"{n} devices")
    ax.set(xticks=stages, xlabel="ZeRO stage", ylabel="billion parameters", yscale="log",
           title=f"largest model whose step fits {results['fit_gb']:g} GB per device\n"
                 "(Llama-shaped; compiled for CPU devices)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
  else:
    ax.axis("off")
  plots.save(fig, os.path.join(out_dir, "zero_memory.png"), dpi=110)


def table(results: dict) -> str:
  """MiB per device: compiled peak, formula, residual; and the largest models that fit."""
  mib = lambda x: f"{x / 2**20:.1f}"  # noqa: E731
  lines = ["| stage | N | compiled peak | ZeRO formula | residual | residual / layer params |",
           "|---|---|---|---|---|---|"]
  for r in sorted(results["runs"], key=lambda r: (r["stage"], r["n_devices"])):
    lines.append(
        f"| {r['stage']} | {r['n_devices']} | {mib(r['compiled']['peak'])} | "
        f"{mib(r['formula']['total'])} | {mib(r['residual'])} | "
        f"{r['residual'] / r['layer_param_bytes']:.2f} |")
  if results.get("fits"):
    lines += ["", f"| stage | devices | largest that fits {results['fit_gb']:g} GB | d_model x "
              "layers | its peak (GB) | next size's peak (GB) |", "|---|---|---|---|---|---|"]
    for f in sorted(results["fits"], key=lambda f: (f["n_devices"], f["stage"])):
      big, over = f["largest"], f["first_over"]
      lines.append(
          f"| {f['stage']} | {f['n_devices']} | {big.get('params', 0) / 1e9:.2f}B | "
          f"{big.get('d_model', '-')} x {big.get('n_layers', '-')} | "
          f"{big['compiled']['peak'] / 1e9:.1f} | "
          f"{over['compiled']['peak'] / 1e9 if over else float('nan'):.1f} |")
  return "\n".join(lines)


def stages_on_these_devices(s: dict, on_cpu: bool) -> dict:
  """experiments.accelerator's zero section: the compiled step's memory per device at each stage
  of s["zero"] on all the devices there are (on one device every stage holds everything)."""
  z = s["zero"]
  model_cfg = ModelConfig(
      vocab_size=z["vocab"], d_model=z["d_model"], n_layers=z["n_layers"], n_heads=z["n_heads"],
      n_kv_heads=z["n_heads"], d_ff=z["d_ff"], max_seq_len=z["seq_len"],
      dtype="float32" if on_cpu else "bfloat16")
  n = jax.device_count()
  batch = -(-z["batch"] // n) * n  # rows split evenly over the devices
  rows = []
  for stage in z["stages"]:
    run, compiled = compile_step(model_cfg, train_settings(), stage, n, batch, z["seq_len"])
    whole = zero.unpartitioned_bytes(run.abstract_state)
    rows.append({"stage": stage, "compiled": step_memory(compiled),
                 "formula": zero.formula_bytes(stage, whole["params"], whole["grads"],
                                               whole["opt_state"], n)})
  return {"n_devices": n, "model": model_cfg.to_dict(), "batch": batch, "seq_len": z["seq_len"],
          "stages": rows}
