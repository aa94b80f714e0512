"""Experiment: the compiled train step's memory per device under ZeRO stages 0-3.

  python -m experiments.zero_memory [--out=results/zero] [--device_counts=1,2,4,8]
      [--stages=0,1,2,3] [--steps=3] [--fit_devices=8,64] [--fit_gb=80]
      [--config=experiments/configs/default.py] [--config.model...]

Part 1, measured. For every (stage, N data-parallel devices) a model whose train state outweighs
its activations (default: default.py's, widened to 8 layers of d_model 512, sequences of 32
tokens, a global batch of 8 rows) is compiled and trained for a few steps on N virtual CPU
devices. Recorded per device: XLA's memory_analysis() of the compiled step (arguments + outputs +
temporaries - aliased: the step's peak), the ZeRO formula (P + G + O split per the stage), the
bytes of the train state that device 0 really holds after the steps, and the residual (peak minus
formula), beside the bytes of one layer's parameters.

Part 2, compiled only. The largest model that fits an 80 GB device per stage on 8 and 64
devices: Llama-shaped models (d_model = 128 k, n_layers = n_heads = k, d_ff = 8/3 d_model, vocab
32,000, 2,048-token sequences, one per device, bfloat16 compute, float32 master weights and Adam
moments, remat=full) are compiled for the mesh (nothing is allocated: the state is abstract), and
k is bisected on the compiled step's peak. The compile is for the CPU backend: a GPU compile fuses
and lays out temporaries differently, so the sizes are the CPU compiler's account of the same
program, not a GPU measurement.

Every finished record is written to results.json at once and skipped when the script is run
again (--force reruns everything). The script asks for 64 virtual CPU devices itself.
"""

import json
import os
import time

from absl import flags

from train import cli
from train import files, plots

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script. Defined on demand, not at import, so tests and other scripts can
  import its functions beside other experiment scripts (absl refuses a flag defined twice)."""
  from ml_collections import config_flags  # here: experiments.accelerator imports this module

  config_flags.DEFINE_config_file("config", "experiments/configs/default.py", "Model and optimizer.")
  flags.DEFINE_string("out", "results/zero", "Where results.json and the plots go.")
  flags.DEFINE_list("device_counts", ["1", "2", "4", "8"], "Part 1: data-parallel device counts.")
  flags.DEFINE_list("stages", ["0", "1", "2", "3"], "ZeRO stages.")
  flags.DEFINE_integer("steps", 3, "Part 1: training steps per run (the first one compiles).")
  flags.DEFINE_integer("seq_len", 32, "Part 1: tokens per row: short, so the state dominates.")
  flags.DEFINE_integer("d_model", 512, "Part 1: model width.")
  flags.DEFINE_integer("n_layers", 8, "Part 1: layers.")
  flags.DEFINE_list("fit_devices", ["8", "64"], "Part 2: device counts (empty: skip part 2).")
  flags.DEFINE_float("fit_gb", 80.0, "Part 2: memory per device in GB.")
  flags.DEFINE_bool("force", False, "Rerun records already in results.json.")


PARTS = ("params", "grads", "opt_state")
MAX_DEVICES = 64


def _compile(model_cfg, train_cfg, stage: int, n: int, batch: int, seq_len: int):
  """(ShardedTraining, compiled step) on the first n devices, from abstract shapes only."""
  import jax
  import jax.numpy as jnp

  from sharding import mesh as mesh_lib
  from train import state as sharded

  # train_cfg: train/settings.TrainSettings
  mesh = mesh_lib.make_mesh({"data": n}, devices=jax.devices()[:n])
  run = sharded.make_sharded_training(model_cfg, train_cfg, mesh, stage, pad_id=-1)
  struct = jax.ShapeDtypeStruct((batch, seq_len + 1), jnp.int32, sharding=run.batch_sharding)
  return run, run.train_step.lower(run.abstract_state, struct).compile()


def _memory(compiled) -> dict:
  from sharding import memory as memory_lib

  m = compiled.memory_analysis()
  return {"peak": memory_lib.step_bytes(compiled), "arguments": int(m.argument_size_in_bytes),
          "outputs": int(m.output_size_in_bytes), "temporaries": int(m.temp_size_in_bytes),
          "aliased": int(m.alias_size_in_bytes)}


def measure(config, stage: int, n: int, steps: int) -> dict:
  """Part 1: one (stage, N): compiled memory, the formula, the state on device 0, step time."""
  import jax
  import numpy as np

  from model.config import ModelConfig
  from sharding import zero
  from train.config import TrainSettings

  model_cfg = ModelConfig.from_dict(config.model.to_dict())
  t = TrainSettings.from_config(config.train)
  run, compiled = _compile(model_cfg, t, stage, n, t.batch_size, config.data.seq_len)
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
  memory = _memory(compiled)
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


def llama_shaped(k: int, base) -> "object":
  """Part 2's model family: d_model 128 k, k layers of k heads (head_dim 128), d_ff 8/3 d_model
  rounded up to 256 (Llama 2 7B is k = 32: 6.7B parameters here with its 32,000 vocabulary)."""
  from model.config import ModelConfig

  d = 128 * k
  fields = dict(base.model.to_dict(), d_model=d, n_layers=k, n_heads=k, n_kv_heads=k,
                d_ff=-(-8 * d // 3 // 256) * 256, vocab_size=32000, max_seq_len=2048,
                remat="full", dtype="bfloat16", param_dtype="float32", scan_layers=True)
  return ModelConfig.from_dict(fields)


def probe(config, stage: int, n: int, k: int) -> dict:
  """Part 2: one compiled (stage, N, k) of the Llama-shaped family: its peak per device."""
  from model.config import count_params
  from train.config import TrainSettings

  model_cfg = llama_shaped(k, config)
  start = time.perf_counter()
  _, compiled = _compile(model_cfg, TrainSettings.from_config(config.train), stage, n, n,
                         model_cfg.max_seq_len)
  return {"stage": stage, "n_devices": n, "k": k, "d_model": model_cfg.d_model,
          "n_layers": model_cfg.n_layers, "params": count_params(model_cfg)["total"],
          "compiled": _memory(compiled), "compile_s": time.perf_counter() - start}


def largest_fit(probes: dict, run_probe, stage: int, n: int, budget: float) -> dict:
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


def plot(results: dict, out_dir: str) -> None:
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


def _save(results: dict, path: str) -> None:
  files.write_json_atomic(path, results, indent=2)


def main(argv):
  del argv
  if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={MAX_DEVICES}").strip()
  cli.setup()
  import jax

  from model.config import ModelConfig, count_params

  config = FLAGS.config
  config.data.seq_len = FLAGS.seq_len
  config.model.max_seq_len = max(FLAGS.seq_len, config.model.max_seq_len)
  config.model.d_model, config.model.n_layers = FLAGS.d_model, FLAGS.n_layers
  config.model.n_heads = config.model.n_kv_heads = FLAGS.d_model // 64
  config.model.d_ff = 4 * FLAGS.d_model
  config.train.batch_size = 8
  counts = [int(n) for n in FLAGS.device_counts]
  fit_counts = [int(n) for n in FLAGS.fit_devices]
  if max(counts + fit_counts) > jax.device_count():
    cli.fail(ValueError(
        f"--device_counts/--fit_devices ask for {max(counts + fit_counts)} devices; "
        f"{jax.device_count()} are present"))
  try:
    model_cfg = ModelConfig.from_dict(config.model.to_dict())
  except ValueError as e:
    cli.fail(e)
  os.makedirs(FLAGS.out, exist_ok=True)
  path = os.path.join(FLAGS.out, "results.json")
  results = {"runs": [], "probes": []}
  if os.path.exists(path) and not FLAGS.force:
    with open(path, encoding="utf-8") as f:
      results = json.load(f)
    if "compiled" not in (results.get("runs") or [{}])[0] and results.get("runs"):
      results = {"runs": [], "probes": []}  # an older format: measure again
  results.update({
      "model": {k: v for k, v in model_cfg.to_dict().items() if k != "moe"},
      "params": count_params(model_cfg)["total"],
      "batch_size": config.train.batch_size, "seq_len": config.data.seq_len,
      "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()})",
      "host_cpus": os.cpu_count(), "fit_gb": FLAGS.fit_gb,
  })
  done = {(r["stage"], r["n_devices"]) for r in results["runs"]}
  for stage in (int(s) for s in FLAGS.stages):
    for n in counts:
      if (stage, n) in done:
        continue
      record = measure(config, stage, n, FLAGS.steps)
      results["runs"].append(record)
      _save(results, path)
      print(f"stage {stage} N={n}: compiled peak {record['compiled']['peak'] / 2**20:.1f} MiB "
            f"per device (formula {record['formula']['total'] / 2**20:.1f}), "
            f"{record['step_time_s'] * 1e3:.0f} ms/step", flush=True)

  probes = {(p["stage"], p["n_devices"], p["k"]): p for p in results.get("probes", [])}
  fits = []
  for n in fit_counts:
    for stage in (int(s) for s in FLAGS.stages):
      def run_probe(k, stage=stage, n=n):
        record = probe(config, stage, n, k)
        results["probes"] = list(probes.values()) + [record]
        _save(results, path)
        print(f"  probe stage {stage} N={n}: {record['params'] / 1e9:.2f}B parameters, "
              f"peak {record['compiled']['peak'] / 1e9:.1f} GB", flush=True)
        return record

      fit = largest_fit(probes, run_probe, stage, n, FLAGS.fit_gb * 1e9)
      fits.append({"stage": stage, "n_devices": n, **fit})
      print(f"stage {stage} on {n} devices: largest fit "
            f"{fit['largest'].get('params', 0) / 1e9:.2f}B parameters", flush=True)
  results["probes"] = list(probes.values())
  results["fits"] = fits
  _save(results, path)
  plot(results, FLAGS.out)
  print(table(results))


if __name__ == "__main__":
  cli.run(main, define_flags)
