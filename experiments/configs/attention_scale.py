"""The 1/sqrt(d_k) study (experiments/attention_scale.py): d_k values at initialisation, and small
models trained with and without the scale at a few head dimensions (~6 minutes on 2 busy CPU cores).

  python -m experiments.attention_scale [--config=experiments/configs/attention_scale.py]

`--config=experiments/configs/attention_scale.py:tiny` is a seconds-long version for tests.
"""

import ml_collections


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.study = "attention_scale"

  # Part (a): statistics of one softmax over random queries and keys, no training.
  c.init = ml_collections.ConfigDict()
  c.init.d_k = (16, 32, 64, 128, 256, 512)
  c.init.batch = 8  # independent (queries, keys) draws averaged over
  c.init.n_queries = 128
  c.init.n_keys = 256  # the uniform softmax's entropy is log(256) = 5.55 nats
  c.init.d_v = 64  # fixed, so the readout's size does not change with d_k
  c.init.model_d_model = 512  # the model's own init: one Attention layer this wide, heads of d_k (0: skip)
  c.init.seed = 0

  # Part (b): small models of fixed width trained on the standard library, heads of d_head.
  c.train = ml_collections.ConfigDict()
  c.train.d_head = (16, 64, 256)
  c.train.d_model = 256
  c.train.n_layers = 2
  c.train.d_ff = 512
  c.train.vocab_size = 512
  c.train.seq_len = 64
  c.train.batch_size = 16
  c.train.steps = 200
  c.train.lr = 3e-3
  c.train.warmup_steps = 20
  c.train.weight_decay = 0.1
  c.train.grad_clip = 1.0
  c.train.train_chars = 2_000_000  # standard-library text the tokenizer and model train on
  c.train.val_chars = 300_000  # held-out files' text the loss is measured on
  c.train.eval_batches = 16
  c.train.seeds = (0, 1)  # each seed: its own init and batch order, the same for both arms
  c.train.corpus = ""  # data.paths syntax; empty = the standard library

  c.launch = ml_collections.ConfigDict()
  c.launch.job_name = "llmlab-attention-scale"
  c.launch.slurm_options = ("--cpus-per-task=2", "--time=00:30:00")

  if preset == "tiny":
    # model_d_model 0: the model's own init is skipped (its compiles cost seconds).
    c.init.update(d_k=(16, 256), batch=2, n_queries=16, n_keys=64, model_d_model=0)
    c.train.update(d_head=(16,), seeds=(0,), d_model=32, n_layers=1, d_ff=64, vocab_size=300,
                   seq_len=16, batch_size=2, steps=2, warmup_steps=1, train_chars=20_000,
                   val_chars=4_000, eval_batches=2)
  elif preset:
    raise ValueError(f"unknown preset {preset!r}; allowed: tiny")
  return c
