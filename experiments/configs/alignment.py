"""The sections SFT, DPO and GRPO share: the arithmetic task, data files, training, evaluation.

The stage configs (sft.py, dpo.py, grpo.py) start from base() and add their own section.
"""

import ml_collections


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # The built-in task: integer arithmetic with exact answers, seeded, split into train and
  # held-out problems by train/arithmetic.py. Every stage of a chain must use the same task.
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

  # User data instead of the task: JSONL files (see train/alignment_data.py). Empty = the task.
  c.data = ml_collections.ConfigDict()
  c.data.train_path = ""
  c.data.eval_path = ""  # {"prompt", "answer"} per line: held-out exact match

  c.train = ml_collections.ConfigDict()
  c.train.steps = 300
  c.train.batch_size = 64
  c.train.lr = 1e-3
  c.train.warmup_steps = 20
  c.train.grad_accum = 1  # micro-batches per step; the update equals the whole batch's
  c.train.weight_decay = 0.0
  c.train.grad_clip = 1.0
  c.train.seed = 0
  c.train.log_every = 5
  c.train.eval_every = 50

  # Held-out exact match, greedy decoding.
  c.eval = ml_collections.ConfigDict()
  c.eval.max_examples = 500
  c.eval.batch_size = 250
  c.eval.max_new_tokens = 8

  # Where the train state lives, as in pretraining (experiments/configs/default.py): mesh axis
  # sizes (one -1 takes the remaining devices) and the ZeRO stage (sharding/zero.py). Any mesh and
  # stage resume any checkpoint of the same run.
  c.sharding = ml_collections.ConfigDict()
  c.sharding.mesh = {"data": -1, "fsdp": 1, "tensor": 1, "expert": 1}
  c.sharding.zero_stage = 0
  c.sharding.device_memory_gb = 0.0  # GB per device; > 0 checks the compiled step first

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 50
  c.checkpoint.keep = 2
  # A run whose checkpoints are all unreadable stops with an error; True starts it over.
  c.checkpoint.restart_if_unreadable = False
  return c
