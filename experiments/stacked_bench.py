"""Benchmark: R learning-rate points of one small model stacked in one step against run by run.

  python -m experiments.stacked_bench [--lrs=8] [--rounds=6] [--steps_per_round=10]
      [--out=results/stacked_runs]
  python -m experiments.stacked_bench --sweep [--sweep_repeats=2] [--out=results/stacked_runs]

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
  flags.DEFINE_bool("sweep", False, "Time the sweep's paths (alone against --stack_runs) instead.")
  flags.DEFINE_integer("sweep_repeats", 2, "Runs of each sweep arm, the first arm alternating.")
  flags.DEFINE_string("sensitivity_lrs", "", "With --sweep: only rerun these learning rates "
                      "(comma-separated) alone at lr x (1 + 2^-20) into sweep_paths.lr_sensitivity "
                      "of the results.json, after a full --sweep run left its data in --scratch.")
  flags.DEFINE_string("scratch", "/tmp/stacked_bench", "Sweep roots of the --sweep arms.")
  flags.DEFINE_bool("shared_machine", False, "Record that other jobs ran on the machine meanwhile.")


LOAD_NOTE = ("The two arms are timed in interleaved rounds, the arm that goes first "
             "alternating, so that any load from elsewhere falls on both alike; "
             "throughput_ratio_per_round shows the spread.")


def sweep_paths() -> None:
  """--sweep: the sweep's two paths, added to OUT/results.json as "sweep_paths"."""
  from experiments.configs.sweeps import mup_transfer as sweep_cfg
  from train import provenance
  from train.studies import sweep as sweep_lib
  from train.studies import sweep_speed

  lrs = tuple(2.0 ** (k - 10) for k in range(FLAGS.lrs))
  path = os.path.join(FLAGS.out, "results.json")
  with open(path) as f:
    saved = json.load(f)
  if FLAGS.sensitivity_lrs:
    chosen = [float(x) for x in FLAGS.sensitivity_lrs.split(",")]
    losses = dict(zip(saved["sweep_paths"]["lrs"], saved["sweep_paths"]["eval_loss"]["alone"]))
    saved["sweep_paths"]["lr_sensitivity"] = sweep_speed.lr_sensitivity(
        FLAGS.scratch, FLAGS.d_model, chosen, [losses[x] for x in chosen])
    with open(path, "w") as f:
      json.dump(saved, f, indent=2)
    print(json.dumps(saved["sweep_paths"]["lr_sensitivity"], indent=2))
    return
  cfg = sweep_cfg.get_config()
  cfg.widths, cfg.parametrizations, cfg.seeds, cfg.lrs = (FLAGS.d_model,), ("sp",), (0,), lrs
  result = sweep_speed.benchmark(FLAGS.scratch, cfg, FLAGS.d_model, lrs, FLAGS.sweep_repeats)
  result |= {"width": FLAGS.d_model, "flags": sweep_speed.study_flags(FLAGS.d_model, lrs),
             "machine": sweep_lib.machine_info(), "load_note": SWEEP_LOAD_NOTE,
             "shared_machine": FLAGS.shared_machine, "load_average": os.getloadavg(),
             "provenance": provenance.provenance()}
  saved["sweep_paths"] = result
  with open(path, "w") as f:
    json.dump(saved, f, indent=2)
  keys = ("median_wall_s", "wall_clock_ratio", "wall_clock_ratio_per_repeat",
          "eval_loss_max_abs_diff")
  print(json.dumps({k: result[k] for k in keys}, indent=2))


SWEEP_LOAD_NOTE = ("The arms alternate (alone, stacked, stacked, alone, ...) so that load falls on "
                   "both, and wall_clock_ratio_per_repeat shows the spread.")


def main(argv):
  del argv
  cli.setup()
  if FLAGS.sweep:
    sweep_paths()
    return
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
             "load_note": LOAD_NOTE, "shared_machine": FLAGS.shared_machine,
             "load_average": os.getloadavg(), "provenance": provenance.provenance()}
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, "results.json"), "w") as f:
    json.dump(result, f, indent=2)
  stacked_speed.plot(result, FLAGS.out)
  keys = ("throughput_ratio", "throughput_ratio_min_round", "wall_clock_ratio_with_compile",
          "compile_ratio", "final_loss_max_abs_diff", "params", "estimate_at_train_steps")
  print(json.dumps({k: result[k] for k in keys}, indent=2))


if __name__ == "__main__":
  cli.run(main, define_flags)
