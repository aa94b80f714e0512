"""Convert between Hugging Face checkpoints (Llama, Mixtral) and llmlab workdirs.

  python -m experiments.convert --from_hf=DIR --workdir=runs/NAME [--param_dtype=float32]
  python -m experiments.convert --to_hf=DIR --workdir=runs/NAME [--max_shard_size=5GB]

--from_hf reads DIR (config.json, model.safetensors or shards with their index, tokenizer.json
when present) and writes a workdir laid out like one written by training, so that
checkpoint.load_params, the generation script, experiments.train and the alignment stages read it:
  config.json      the full config tree: model from the checkpoint, data and train defaults
  config.py        that config as a config file, to fine-tune with
                     python -m experiments.train --workdir=runs/NAME --config=runs/NAME/config.py \
                         --config.data.paths=FILES
                   (training starts at step 0 from the imported weights)
  tokenizer.json   DIR's tokenizer, byte for byte
  hf/              DIR's config.json and tokenizer side files, carried back out by --to_hf
  checkpoints/0/   the imported parameters, a fresh optimizer state and data position

--to_hf writes DIR from the newest readable checkpoint of the workdir; transformers loads it with
AutoModelForCausalLM.from_pretrained(DIR) and AutoTokenizer.from_pretrained(DIR). A DIR that holds
an llmlab workdir, or any file the export would write, is refused unless --overwrite. The work is
train/hf_workdir.py's.
"""

from __future__ import annotations

from absl import flags

from train import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script (cli.run defines them before parsing)."""
  flags.DEFINE_string("from_hf", None, "Hugging Face model directory to import into --workdir.")
  flags.DEFINE_string("to_hf", None, "Directory to export --workdir to, in Hugging Face format.")
  flags.DEFINE_string("workdir", None, "The llmlab workdir: written by --from_hf, read by --to_hf.")
  flags.DEFINE_string("param_dtype", None,
                      "--from_hf: storage dtype of the parameters (float32, bfloat16, float16); "
                      "default: the checkpoint's.")
  flags.DEFINE_integer("seq_len", 256,
                       "--from_hf: data.seq_len of the workdir's config (fixed once it trains), at "
                       "most the model's max_position_embeddings.")
  flags.DEFINE_string("max_shard_size", "5GB",
                      "--to_hf: largest safetensors file, e.g. 5GB, 500MB, 2GiB; above it, shards.")
  flags.DEFINE_bool("overwrite", False,
                    "--to_hf: replace the files of a directory that already holds an export, "
                    "tokenizer files or an llmlab workdir (refused without it).")
  flags.mark_flag_as_required("workdir")


def main(argv):
  del argv
  cli.setup()
  if (FLAGS.from_hf is None) == (FLAGS.to_hf is None):
    cli.fail(ValueError("give exactly one of --from_hf=DIR (import) and --to_hf=DIR (export)"))
  # The heavy imports wait until a conversion runs (flags parse first).
  from experiments.configs import default
  from model.interop import InteropError
  from train import hf_workdir

  try:
    if FLAGS.from_hf is not None:
      summary = hf_workdir.import_workdir(
          FLAGS.from_hf, FLAGS.workdir, defaults=default.get_config(),
          param_dtype=FLAGS.param_dtype, seq_len=FLAGS.seq_len)
      if summary["tokenizer"] and summary["eot_token"] is None:
        print("warning: the tokenizer declares no eos token; name the token that ends a "
              f"document in {FLAGS.workdir}/special_tokens.json "
              '({"<|endoftext|>": "TOKEN"}) before training or generating', flush=True)
    else:
      summary = hf_workdir.export_workdir(
          FLAGS.workdir, FLAGS.to_hf, max_shard_bytes=hf_workdir.parse_size(FLAGS.max_shard_size),
          overwrite=FLAGS.overwrite)
  except (InteropError, ValueError, FileNotFoundError) as e:
    cli.fail(e)
  print(cli.format_summary(summary), flush=True)


if __name__ == "__main__":
  cli.run(main, define_flags)
