"""Default experiment: a small GQA model on the Python standard library, under 10 minutes on 2 CPU cores.

Override any field from the command line, e.g. --config.model.n_layers=6 --config.train.steps=50.
"""

import ml_collections

from model.config import ModelConfig
from train import config as config_lib


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # data.*, train.* and checkpoint.*: train/config.py's defaults, which document each field.
  c.data = config_lib.section(config_lib.DataSettings)

  # Every model setting is ModelConfig's (model/config.py documents each), except:
  c.model = config_lib.section(
      ModelConfig,
      vocab_size=c.data.get_ref("vocab_size"),  # the embedding table follows the tokenizer
      max_seq_len=c.data.get_ref("seq_len"),
      d_model=192, n_heads=6, d_ff=512,
  )  # n_kv_heads stays ModelConfig's 2: GQA, 3 query heads share each key/value head

  c.train = config_lib.section(config_lib.TrainSettings)
  c.checkpoint = config_lib.section(config_lib.CheckpointSettings)
  # Every mesh axis is listed so that each can be set from the command line
  # (--config.sharding.mesh.tensor=2); one -1 takes the remaining devices.
  c.sharding = config_lib.section(
      config_lib.ShardingSettings, mesh={"data": -1, "fsdp": 1, "tensor": 1, "expert": 1})
  return c
