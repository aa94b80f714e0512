"""Default experiment: a small GQA model on the Python standard library, under 10 minutes on 2 CPU cores.

Override any field from the command line, e.g. --config.model.n_layers=6 --config.train.steps=50.
"""

import ml_collections

from experiments import configs
from experiments.configs import model_section
from train import config as config_lib


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  c.data = ml_collections.ConfigDict()
  # Comma-separated files or globs (.txt, .jsonl, .jsonl.gz, .parquet); empty = the stdlib corpus.
  c.data.paths = ""
  # A mixture instead of data.paths: a tuple of {"paths": globs, "weight": > 0}, each source
  # sampled in proportion to its weight; () = data.paths alone. Set it in a config file, or on the
  # command line as a Python literal (docs/data.md):
  #   --config.data.sources='({"paths": "a/*.jsonl", "weight": 0.7}, {"paths": "b/*.txt", "weight": 0.3})'
  c.data.sources = ()
  c.data.text_field = "text"  # the field of a .jsonl line, the column of a .parquet file
  # Where the token shards go (experiments.prepare_data, or the first training run, writes them);
  # empty = <workdir>/data. A folder on a shared filesystem serves every run and every host.
  c.data.prepared = ""
  c.data.seq_len = 256
  c.data.vocab_size = 2048

  # Every model setting is ModelConfig's (model/config.py documents each), except:
  c.model = model_section(
      vocab_size=c.data.get_ref("vocab_size"),  # the embedding table follows the tokenizer
      max_seq_len=c.data.get_ref("seq_len"),
      d_model=192, n_heads=6, d_ff=512,
      n_kv_heads=2,  # GQA: 3 query heads share each key/value head
  )

  # train.*, checkpoint.* and sharding.*: train/config.py's defaults, which document each field.
  c.train = configs.section(config_lib.TrainSettings)
  c.checkpoint = configs.section(config_lib.CheckpointSettings)
  # Every mesh axis is listed so that each can be set from the command line
  # (--config.sharding.mesh.tensor=2); one -1 takes the remaining devices.
  c.sharding = configs.section(
      config_lib.ShardingSettings, mesh={"data": -1, "fsdp": 1, "tensor": 1, "expert": 1})
  return c
