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
again (--force reruns everything). The script asks for 64 virtual CPU devices itself. The
measuring, the bisection, the plot and the table are train/studies/zero_stage_memory.py.
"""

import json
import os

from absl import flags

from train import cli, provenance

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script (cli.run defines them before parsing)."""
  from ml_collections import config_flags

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


MAX_DEVICES = 64


def main(argv):
  del argv
  if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={MAX_DEVICES}").strip()
  cli.setup()
  import jax

  from model.config import ModelConfig, count_params
  from train import files
  from train.studies import zero_stage_memory as zsm

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
  resumed = bool(results["runs"] or results.get("probes"))  # records of an earlier invocation
  save = lambda: files.write_json_atomic(path, provenance.stamp(results, config, resumed=resumed),
                                         indent=2)
  stages = [int(s) for s in FLAGS.stages]
  zsm.measure_missing(config, results, stages, counts, FLAGS.steps, save)
  zsm.fit_all(config, results, stages, fit_counts, FLAGS.fit_gb * 1e9, save)
  save()
  zsm.plot(results, FLAGS.out)
  print(zsm.table(results))


if __name__ == "__main__":
  cli.run(main, define_flags)
