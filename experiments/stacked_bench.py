"""Benchmark: R learning-rate points of one small model stacked in one step against run by run.

  python -m experiments.stacked_bench [--lrs=8] [--rounds=6] [--steps_per_round=10]
      [--out=results/stacked_runs]

The model is the muP transfer sweep's shape at width 64 (experiments/configs/sweeps/
mup_transfer.py: 2 layers, heads of width 16, d_ff 3 x d_model, 512-token vocabulary, 16 x 64
tokens per step), standard parametrization, learning rates 2^-10, 2^-9, ... factor 2 apart. Both
arms run in this process, timed in interleaved rounds so that other jobs' load falls on both
(train/studies/stacked_speed.py). Writes results.json (tokens/s of each arm, the ratio, compile
and wall clock, each run's last loss in both arms, provenance) and stacked_runs.png.
"""

from __future__ import annotations

import dataclasses
import json
import os

from absl import flags

from train import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script (cli.run defines them before parsing)."""
  flags.DEFINE_integer("lrs", 8, "Learning-rate points (runs stacked), from 2^-10 up by 2x.")
  flags.DEFINE_integer("rounds", 6, "Interleaved timing rounds.")
  flags.DEFINE_integer("steps_per_round", 10, "Steps of every run per arm per round.")
  flags.DEFINE_integer("d_model", 64, "Model width (heads of width 16, d_ff 3 x d_model).")
  flags.DEFINE_integer("vmap_width", 1, "Runs one pass of the stacked step computes together "
                       "(train/stacked.py; 0: all). On a CPU 1 is fastest (docs/training.md).")
  flags.DEFINE_string("out", "results/stacked_runs", "Output directory.")


LOAD_NOTE = ("The machine is shared with other jobs (2 CPU cores). The two arms are timed in "
             "interleaved rounds, the arm that goes first alternating, so that load falls on "
             "both alike; throughput_ratio_per_round shows the spread.")


def main(argv):
  del argv
  cli.setup()
  from model.config import ModelConfig
  from train import provenance
  from train.config import TrainSettings
  from train.studies import stacked_speed

  d = FLAGS.d_model
  cfg = ModelConfig(vocab_size=512, d_model=d, n_layers=2, n_heads=d // 16, n_kv_heads=d // 16,
                    d_ff=3 * d, max_seq_len=64)
  # The mup_transfer sweep's train.* (300 steps, warmup 30, batch 16); only lr differs.
  base = TrainSettings(steps=300, warmup_steps=30, batch_size=16)
  runs = [dataclasses.replace(base, lr=2.0 ** (k - 10)) for k in range(FLAGS.lrs)]
  result = stacked_speed.benchmark(cfg, runs, FLAGS.rounds, FLAGS.steps_per_round,
                                   FLAGS.vmap_width)
  result |= {"lrs": [r.lr for r in runs], "model": cfg.to_dict(), "train": dataclasses.asdict(base),
             "load_note": LOAD_NOTE, "provenance": provenance.provenance()}
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, "results.json"), "w") as f:
    json.dump(result, f, indent=2)
  stacked_speed.plot(result, FLAGS.out)
  keys = ("throughput_ratio", "throughput_ratio_min_round", "wall_clock_ratio_with_compile",
          "compile_ratio", "final_loss_max_abs_diff", "params", "estimate_at_train_steps")
  print(json.dumps({k: result[k] for k in keys}, indent=2))


if __name__ == "__main__":
  cli.run(main, define_flags)
