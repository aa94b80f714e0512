"""A tiny model for smoke tests and quick checks: 6 steps of a 28k-parameter model.

Trains on data.paths="stdlib:tiny", ~400 kB of the standard library (train/data/documents.py
STDLIB_TINY_FILES): its tokenizer and shards take 0.7 s, where the whole library (data.paths="")
took half a minute. Measured end to end (results/tiny_run/results.json, experiments.tiny_run, the
2-core CPU otherwise idle): a first run 10.9 s, a second run in a new workdir on the shards and the
compiled programs the first left (data.prepared, --compilation_cache) 6.2 s.
"""

from experiments.configs import default


def get_config():
  c = default.get_config()
  c.data.update(paths="stdlib:tiny", seq_len=32, vocab_size=300)
  c.model.update(d_model=32, n_layers=2, n_heads=4, d_ff=64)
  c.train.update(steps=6, batch_size=8, lr=1e-2, warmup_steps=2, log_every=1, eval_every=3,
                 eval_batches=2)
  # JSONL only: TensorBoard's writer (tensorboardX) imports torch where it is installed, 4 s of a
  # tiny run; add it back with --config.train.loggers=tensorboard,jsonl.
  c.train.loggers = ("jsonl",)
  c.checkpoint.update(every_steps=3, keep=5)
  return c
