"""The sections SFT, DPO and GRPO share: the arithmetic task, data files, training, evaluation.

The stage configs (sft.py, dpo.py, grpo.py) start from base() and add their own section.
"""

import ml_collections

from experiments.configs import default


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # The built-in task: integer arithmetic with exact answers, seeded, split into train and
  # held-out problems by train/data/arithmetic.py. Every stage of a chain must use the same task.
  c.task = ml_collections.ConfigDict()
  c.task.digits = 2  # both operands have exactly this many digits
  c.task.ops = "+-"  # any of "+-*"; subtraction answers are non-negative
  c.task.n_train = 4000
  c.task.n_heldout = 500
  c.task.heldout_fraction = 0.2  # share of all problems held out, by a hash of the prompt
  # " 1 2 + 3 5 =": a space before every character, so that a BPE tokenizer (a pretrained
  # init_workdir) cannot merge digits. A fresh model's byte-level tokenizer has one token per
  # digit anyway, and unspaced text is half as long.
  c.task.spaced_digits = False
  c.task.seed = 0

  # User data instead of the task: JSONL files (see train/align/data.py). Empty = the task.
  c.data = ml_collections.ConfigDict()
  c.data.train_path = ""
  c.data.eval_path = ""  # {"prompt", "answer"} per line: held-out exact match

  # Training, sharding (where the train state lives; any mesh and stage resume any checkpoint of
  # the same run) and checkpoints are pretraining's sections (default.py explains each), except:
  pretraining = default.get_config()
  c.train = pretraining.train
  c.train.update(steps=300, batch_size=64, lr=1e-3, warmup_steps=20, weight_decay=0.0,
                 log_every=5, eval_every=50)
  del c.train.eval_batches  # evaluation is the exact match below, not held-out loss

  # Held-out exact match, greedy decoding.
  c.eval = ml_collections.ConfigDict()
  c.eval.max_examples = 500
  c.eval.batch_size = 250
  c.eval.max_new_tokens = 8

  c.sharding = pretraining.sharding
  c.checkpoint = pretraining.checkpoint
  c.checkpoint.update(every_steps=50, keep=2)
  return c
