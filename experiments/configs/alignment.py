"""The sections SFT, DPO and GRPO share: the arithmetic task, data files, training, evaluation.

The stage configs (sft.py, dpo.py, grpo.py) start from base() and add their own section. Every
section's defaults, with the reason for each, are train/config.py's (TaskSettings,
StageDataSettings, EvalSettings, SftSettings, DpoSettings, GrpoSettings).
"""

import ml_collections

from experiments.configs import default
from train import config as config_lib


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # The built-in arithmetic task, or the user's JSONL files instead (data.train_path, eval_path).
  c.task = config_lib.section(config_lib.TaskSettings)
  c.data = config_lib.section(config_lib.StageDataSettings)

  # Training, sharding (where the train state lives; any mesh and stage resume any checkpoint of
  # the same run) and checkpoints are pretraining's sections (default.py), except:
  pretraining = default.get_config()
  c.train = pretraining.train
  c.train.update(steps=300, batch_size=64, lr=1e-3, warmup_steps=20, weight_decay=0.0,
                 log_every=5, eval_every=50)
  del c.train.eval_batches  # evaluation is the exact match of eval.*, not held-out loss

  c.eval = config_lib.section(config_lib.EvalSettings)  # held-out exact match, greedy decoding

  c.sharding = pretraining.sharding
  c.checkpoint = pretraining.checkpoint
  c.checkpoint.update(every_steps=50, keep=2)
  return c
