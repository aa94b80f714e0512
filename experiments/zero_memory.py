"""Experiment: bytes per device under ZeRO stages 0-3 and 1, 2, 4, 8 data-parallel devices.

  python -m experiments.zero_memory [--out=results/zero] [--device_counts=1,2,4,8]
      [--stages=0,1,2,3] [--steps=4] [--config=experiments/configs/default.py] [--config.model...]

For every (stage, device count) a few-million-parameter model (default.py's) takes a few training
steps on a mesh over that many devices. Then, from the per-device shards of the real arrays, the
bytes that device 0 holds: the parameters and optimizer state of the train state after those
steps, and one step's gradients laid out as the stage's train step lays them out. Beside them: the
ZeRO formula for the configured dtypes, and the median step time. On a machine without enough
accelerators the script asks for 8 virtual CPU devices (the XLA flag is set before JAX starts).

The batches are random tokens: bytes and step time do not depend on what the model reads. Each
finished (stage, device count) is written to results.json at once and skipped when the script is
run again (--force reruns everything).
"""

import json
import os
import time

from absl import app, flags
from ml_collections import config_flags

from experiments import common

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script. Defined on demand, not at import, so tests and other scripts can
  import its functions beside other experiment scripts (absl refuses a flag defined twice)."""
  config_flags.DEFINE_config_file("config", "experiments/configs/default.py", "Model and optimizer.")
  flags.DEFINE_string("out", "results/zero", "Where results.json and zero_memory.png go.")
  flags.DEFINE_list("device_counts", ["1", "2", "4", "8"], "Data-parallel device counts.")
  flags.DEFINE_list("stages", ["0", "1", "2", "3"], "ZeRO stages.")
  flags.DEFINE_integer("steps", 4, "Training steps per run (the first one compiles).")
  flags.DEFINE_integer("seq_len", 64, "Tokens per row: short, so that a step is quick on CPU.")
  flags.DEFINE_bool("force", False, "Rerun runs already in results.json.")


PARTS = ("params", "grads", "opt_state")
_GRAD_FNS = {}  # ModelConfig -> jitted gradient of the loss


def measure(config, stage: int, n_devices: int, steps: int) -> dict:
  """One run: bytes on device 0 (measured and by formula) and the median step time."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from model.config import ModelConfig
  from sharding import mesh as mesh_lib
  from sharding import zero
  from train import loop
  from train import step as step_lib

  model_cfg = ModelConfig.from_dict(config.model.to_dict())
  t = config.train
  b, l1 = t.batch_size, config.data.seq_len + 1
  mesh = mesh_lib.make_mesh({"data": n_devices}, devices=jax.devices()[:n_devices])
  run = loop.make_sharded_training(model_cfg, t, mesh, stage, pad_id=-1)
  compiled = run.train_step.lower(
      run.abstract_state, jax.ShapeDtypeStruct((b, l1), jnp.int32, sharding=run.batch_sharding)).compile()
  state = run.init(jax.random.key(t.seed))
  rng = np.random.default_rng(0)
  times = []
  for _ in range(steps):
    batch = jax.device_put(rng.integers(0, model_cfg.vocab_size, (b, l1), dtype=np.int32),
                           run.batch_sharding)
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)

  # Real gradients of the trained parameters (computed on one device), laid out as the stage's
  # train step lays out its gradients: whole on every device, or each device's slice.
  if model_cfg not in _GRAD_FNS:  # compiled once per model, not once per run
    _GRAD_FNS[model_cfg] = jax.jit(jax.grad(
        lambda p, batch: step_lib.loss_sums(run.graphdef, p, batch, -1)[0]))
  grads = _GRAD_FNS[model_cfg](
      jax.device_get(state["params"]),
      jnp.asarray(rng.integers(0, model_cfg.vocab_size, (2, l1), dtype=np.int32)))
  grads = jax.device_put(grads, run.shardings.grads)

  device = mesh.devices.flat[0]
  measured = {
      "params": zero.bytes_on_device(state["params"], device),
      "grads": zero.bytes_on_device(grads, device),
      "opt_state": zero.bytes_on_device(state["opt_state"], device),
  }
  measured["total"] = sum(measured.values())
  whole = zero.unpartitioned_bytes(run.abstract_state)
  memory = compiled.memory_analysis()
  return {
      "stage": stage, "n_devices": n_devices, "measured": measured,
      "formula": zero.formula_bytes(stage, whole["params"], whole["grads"], whole["opt_state"],
                                    n_devices),
      "unpartitioned": whole,
      "step_time_s": float(np.median(times[1:] or times)),
      "xla_temp_bytes": getattr(memory, "temp_size_in_bytes", None),
      "loss": float(metrics["loss"]),
  }


def plot(results: dict, out_dir: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  runs = results["runs"]
  stages = sorted({r["stage"] for r in runs})
  counts = sorted({r["n_devices"] for r in runs})
  fig, axes = plt.subplots(1, len(stages) + 1, figsize=(4.2 * (len(stages) + 1), 4.2))
  colors = {"params": "tab:blue", "grads": "tab:orange", "opt_state": "tab:green"}
  mb = 1 / 2**20
  for ax, stage in zip(axes, stages):
    by_n = {r["n_devices"]: r for r in runs if r["stage"] == stage}
    x = np.arange(len(counts))
    bottom = np.zeros(len(counts))
    for part in PARTS:
      h = np.array([by_n[n]["measured"][part] * mb if n in by_n else 0 for n in counts])
      ax.bar(x, h, 0.6, bottom=bottom, color=colors[part], label=f"{part} (measured)")
      bottom += h
    formula = [by_n[n]["formula"]["total"] * mb if n in by_n else np.nan for n in counts]
    ax.plot(x, formula, "k_", markersize=28, markeredgewidth=2.5, label="formula (total)")
    ax.set(xticks=x, xticklabels=counts, xlabel="data-parallel devices N",
           title=f"ZeRO stage {stage}")
    ax.grid(axis="y", alpha=0.3)
  axes[0].set_ylabel("MiB on device 0")
  axes[len(stages) - 1].legend(fontsize=8, loc="upper right")  # the emptiest panel
  ax = axes[-1]
  for stage in stages:
    by_n = {r["n_devices"]: r for r in runs if r["stage"] == stage}
    ns = [n for n in counts if n in by_n]
    ax.plot(ns, [by_n[n]["step_time_s"] * 1e3 for n in ns], "o-", label=f"stage {stage}")
  ax.set(xscale="log", xticks=counts, xticklabels=counts, xlabel="data-parallel devices N",
         ylabel="ms per step", title="step time (virtual CPU devices)")
  ax.minorticks_off()
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "zero_memory.png"), dpi=110)


def table(results: dict) -> str:
  """The README's table: MiB on device 0, measured / formula, and the step time."""
  mib = lambda x: f"{x / 2**20:.2f}"  # noqa: E731
  lines = ["| stage | N | params | grads | optimizer | total (formula) | step ms |",
           "|---|---|---|---|---|---|---|"]
  for r in sorted(results["runs"], key=lambda r: (r["stage"], r["n_devices"])):
    m, f = r["measured"], r["formula"]
    lines.append(
        f"| {r['stage']} | {r['n_devices']} | {mib(m['params'])} | {mib(m['grads'])} | "
        f"{mib(m['opt_state'])} | {mib(m['total'])} ({mib(f['total'])}) | "
        f"{r['step_time_s'] * 1e3:.0f} |")
  return "\n".join(lines)


def main(argv):
  del argv
  if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
  common.setup()
  import jax

  from model.config import ModelConfig, count_params

  config = FLAGS.config
  config.data.seq_len = FLAGS.seq_len
  counts = [int(n) for n in FLAGS.device_counts]
  if max(counts) > jax.device_count():
    common.fail(ValueError(
        f"--device_counts asks for {max(counts)} devices; {jax.device_count()} are present"))
  os.makedirs(FLAGS.out, exist_ok=True)
  path = os.path.join(FLAGS.out, "results.json")
  results = {"runs": []}
  if os.path.exists(path) and not FLAGS.force:
    with open(path, encoding="utf-8") as f:
      results = json.load(f)
  model_cfg = ModelConfig.from_dict(config.model.to_dict())
  results.update({
      "model": {k: v for k, v in model_cfg.to_dict().items() if k != "moe"},
      "params": count_params(model_cfg)["total"],
      "batch_size": config.train.batch_size, "seq_len": config.data.seq_len,
      "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()})",
      "host_cpus": os.cpu_count(),
  })
  done = {(r["stage"], r["n_devices"]) for r in results["runs"]}
  for stage in (int(s) for s in FLAGS.stages):
    for n in counts:
      if (stage, n) in done:
        continue
      try:
        record = measure(config, stage, n, FLAGS.steps)
      except ValueError as e:
        common.fail(e)
      results["runs"].append(record)
      with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
      os.replace(path + ".tmp", path)
      m, fm = record["measured"]["total"], record["formula"]["total"]
      print(f"stage {stage} N={n}: {m / 2**20:.2f} MiB on device 0 (formula {fm / 2**20:.2f}), "
            f"{record['step_time_s'] * 1e3:.0f} ms/step", flush=True)
  plot(results, FLAGS.out)
  print(table(results))


if __name__ == "__main__":
  define_flags()
  app.run(main)
