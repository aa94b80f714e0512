"""experiments.accelerator's sections run in one process, each guarded, into one results.json.

Each section is a function (sizes, on_cpu) -> dict living with its subject (train_speed,
attention_speed, roofline, speculative_costs, zero_stage_memory). An exception is recorded under
the section's name and the next section runs; results.json is rewritten after every section, so
a run cut short keeps what it measured.

Each section imports its module when it runs, not before: a module that cannot be imported on a
device machine (a dependency missing there) costs that section, recorded as its error, and not
the whole run. Nothing here imports grain, ml_collections or tokenizers.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from typing import Any, Callable

import jax

from train import plots, provenance


def _train_step(s: dict, on_cpu: bool) -> dict:
  from train.studies import train_speed

  return train_speed.measure_sizes(s, on_cpu)


def _attention(s: dict, on_cpu: bool) -> dict:
  from train.studies import attention_speed

  return attention_speed.measure_implementations(s, on_cpu)


def _decode(s: dict, on_cpu: bool) -> dict:
  from train.studies import roofline

  return roofline.random_model_against_bound(s, on_cpu)


def _speculative(s: dict, on_cpu: bool) -> dict:
  from train.studies import speculative_costs

  return speculative_costs.random_model_costs(s, on_cpu)


def _zero(s: dict, on_cpu: bool) -> dict:
  from train.studies import zero_stage_memory

  return zero_stage_memory.stages_on_these_devices(s, on_cpu)


SECTION_FNS: dict[str, Callable[[dict, bool], dict]] = {
    "train_step": _train_step, "attention": _attention, "decode": _decode,
    "speculative": _speculative, "zero": _zero,
}


def run_sections(names: list[str], sizes: dict, smoke: bool, out: str) -> dict:
  """Runs each named section on sizes (every size the sections use), guarded; writes
  out/results.json after every one, and out/accelerator.png at the end."""
  device = jax.devices()[0]
  on_cpu = device.platform == "cpu"
  result: dict[str, Any] = {
      "device": str(device.device_kind), "platform": device.platform,
      "device_count": jax.device_count(), "jax": jax.__version__, "smoke": smoke,
      # Set by the caller to try XLA options (command buffers for the decode loop, say).
      "xla_flags": os.environ.get("XLA_FLAGS", ""), "sections": {}, "errors": {},
      "provenance": provenance.provenance()}
  os.makedirs(out, exist_ok=True)
  for name in names:
    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
      section = SECTION_FNS[name](sizes, on_cpu)
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


def _plot_train(ax: Any, sec: dict) -> None:
  for i, size in enumerate(sec.get("train_step", {}).get("sizes", [])):
    for j, (name, v) in enumerate(size["variants"].items()):
      label = f"{size['params'] / 1e9:.2f}B {name}"
      ax.bar(i * 3 + j, v["ratio_to_measured_peak"], color=f"C{j}")
      ax.text(i * 3 + j, v["ratio_to_measured_peak"], label, ha="center", va="bottom", fontsize=7)
  ax.set(title="train step: model FLOP/s / measured matmul peak", xticks=[])


def _plot_attention(ax: Any, sec: dict) -> None:
  rows = [r for r in sec.get("attention", {}).get("rows", []) if "time_s" in r]
  for impl in sorted({r["implementation"] for r in rows}):
    pts = [(r["n"], r["time_s"] * 1e3) for r in rows if r["implementation"] == impl]
    ax.loglog(*zip(*pts), "o-", label=impl, base=2)
  ax.set(title="attention fwd+bwd (causal)", xlabel="sequence length", ylabel="ms")
  ax.legend(fontsize=7)


def _plot_decode(ax: Any, sec: dict) -> None:
  dec = sec.get("decode", {}).get("rows", [])
  if dec:
    xs = range(len(dec))
    ax.bar([x - 0.2 for x in xs], [r["tokens_per_s"] for r in dec], 0.4, label="measured")
    ax.bar([x + 0.2 for x in xs], [r["bound_tokens_per_s"] for r in dec], 0.4,
           label="bandwidth bound")
    ax.set(xticks=list(xs), xticklabels=[f"batch {r['batch']}" for r in dec])
    ax.legend(fontsize=7)
  ax.set(title="decode tokens/s", yscale="log")


def _plot_speculative(ax: Any, sec: dict) -> None:
  spec = sec.get("speculative")
  if spec:
    alphas = sorted(spec["speedup_at_alpha"], key=float)
    ax.plot([float(a) for a in alphas], [spec["speedup_at_alpha"][a] for a in alphas], "o-")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set(title=f"speculative, gamma={spec['gamma']}: speedup from measured costs",
           xlabel="acceptance rate alpha", ylabel="speedup")


def plot(result: dict, out: str) -> None:
  """out/accelerator.png: one panel per measured section (train, attention, decode, speculative)."""
  plt = plots.pyplot()
  sec = result["sections"]
  fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
  for ax, panel in zip(axes, (_plot_train, _plot_attention, _plot_decode, _plot_speculative)):
    panel(ax, sec)
  fig.suptitle(f"{result['device']} (jax {result['jax']})", fontsize=9)
  fig.tight_layout()
  plots.save(fig, os.path.join(out, "accelerator.png"), 110)
