"""Default experiment: a small GQA model on the Python standard library, under 10 minutes on 2 CPU cores.

Override any field from the command line, e.g. --config.model.n_layers=6 --config.train.steps=50.
"""

import ml_collections

from experiments.configs import model_section


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

  c.train = ml_collections.ConfigDict()
  c.train.steps = 400
  c.train.batch_size = 16
  c.train.lr = 3e-3
  c.train.warmup_steps = 50
  c.train.weight_decay = 0.1
  c.train.grad_clip = 1.0
  c.train.grad_accum = 1  # micro-batches per step; the update equals the whole batch's
  c.train.seed = 0
  c.train.log_every = 10
  c.train.eval_every = 80
  c.train.eval_batches = 8

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 80
  c.checkpoint.keep = 3
  # A run whose checkpoints are all unreadable stops with an error; True starts it over.
  c.checkpoint.restart_if_unreadable = False

  c.sharding = ml_collections.ConfigDict()
  # Axis sizes of the device mesh; one -1 takes the remaining devices. Every axis is listed so
  # that each can be set from the command line (--config.sharding.mesh.tensor=2).
  c.sharding.mesh = {"data": -1, "fsdp": 1, "tensor": 1, "expert": 1}
  # ZeRO over the data-parallel devices: 0 replicated, 1 optimizer state partitioned, 2 gradients
  # too, 3 parameters too (FSDP). Any stage resumes any other's checkpoint.
  c.sharding.zero_stage = 0
  # Memory per device in GB (an H100: 80). Before the first step the compiled step's peak is
  # checked against it, and a run that does not fit stops with the lowest ZeRO stage that would.
  # 0 = no check.
  c.sharding.device_memory_gb = 0.0
  return c
