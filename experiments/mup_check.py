"""muP's coordinate check (Yang et al. 2022): every layer's activation RMS against width, SP and muP.

  python -m experiments.mup_check [--widths=32,64,96,128,192,256] [--base_width=32] [--steps=5]
      [--lr=0.01] [--seeds=2] [--results_dir=results/mup_check]

Models differing only in d_model train a few Adam steps at one learning rate; after each step the
RMS of the embedding output, each block's attention and MLP outputs and the logits is recorded,
and a line fitted to log RMS against log width per layer (train/studies/coord_check.py). Writes
results.json (slopes per layer and step, RMS per width, the settings and provenance) and
coord_check.png (RMS after the last step against width, one panel per parametrization).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from absl import flags

from train import cli, files
from train.studies import coord_check

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script (cli.run defines them before parsing)."""
  flags.DEFINE_list("widths", ["32", "64", "96", "128", "192", "256"], "d_model of each model.")
  flags.DEFINE_integer("base_width", 32, "muP's base d_model (m = width / base_width).")
  flags.DEFINE_integer("n_layers", 2, "Depth, fixed across widths.")
  flags.DEFINE_integer("n_heads", 4, "Heads, fixed: the head widens with d_model.")
  flags.DEFINE_integer("steps", 5, "Adam steps per model.")
  flags.DEFINE_float("lr", 1e-2, "Adam's learning rate (muP: the base model's).")
  flags.DEFINE_integer("seeds", 2, "Seeds the RMS is averaged over.")
  flags.DEFINE_string("results_dir", "results/mup_check", "Where results.json and the plot go.")


def main(argv) -> None:
  del argv
  check = coord_check.CoordCheck(
      widths=tuple(int(w) for w in FLAGS.widths), base_width=FLAGS.base_width,
      n_layers=FLAGS.n_layers, n_heads=FLAGS.n_heads, steps=FLAGS.steps, lr=FLAGS.lr,
      seeds=FLAGS.seeds)
  start = time.time()
  results = {"widths": list(check.widths), "steps": check.steps,
             "settings": dataclasses.asdict(check),
             "model_config_at_base_width": check.model_config(check.base_width, "mup").to_dict(),
             "provenance": coord_check.provenance(), "parametrizations": {}}
  for name in ("sp", "mup"):
    results["parametrizations"][name] = coord_check.run(check, name)
    last = {k: round(v[-1], 3) for k, v in results["parametrizations"][name]["slopes"].items()}
    print(f"{name}: slope of log RMS against log width after step {check.steps}: {last}",
          flush=True)
  results["seconds"] = round(time.time() - start, 1)
  os.makedirs(FLAGS.results_dir, exist_ok=True)
  files.write_atomic(os.path.join(FLAGS.results_dir, "results.json"),
                     json.dumps(results, indent=2))
  coord_check.plot(results, os.path.join(FLAGS.results_dir, "coord_check.png"))
  print(f"wrote {FLAGS.results_dir}/results.json and coord_check.png in {results['seconds']} s")


if __name__ == "__main__":
  cli.run(main, define_flags)
