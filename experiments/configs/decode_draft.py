"""Draft model of the speculative-decoding benchmark: 4 layers at d_model 256, MQA (3.5M
parameters, 30x fewer than the target), distilled from the target.

It is trained on the target's own greedy continuations of 4608 corpus prompts
(experiments/distill_data.py: sequence-level distillation), so that it learns what verification
checks, the target's greedy choice, not the corpus. It must share the target's tokenizer: copy
runs/decode_target/tokenizer.json into the draft's workdir before training (training reuses a
tokenizer.json it finds there):

  python -m experiments.distill_data --target=runs/decode_target --out=runs/decode_draft/distill.jsonl --prompts=512
  python -m experiments.distill_data --target=runs/decode_target --out=runs/decode_draft/distill_s1.jsonl --prompts=2048 --seed=1
  python -m experiments.distill_data --target=runs/decode_target --out=runs/decode_draft/distill_s2.jsonl --prompts=2048 --seed=2
  cp runs/decode_target/tokenizer.json runs/decode_draft/
  python -m experiments.train --workdir=runs/decode_draft --config=experiments/configs/decode_draft.py

For sampling at temperature 1, decode_draft_kl.py trains the same shape on sampled continuations
with the target's logits (KL distillation; not yet run).
"""

import ml_collections

from experiments.configs import decode_target


def get_config() -> ml_collections.ConfigDict:
  c = decode_target.get_config()
  c.data.seq_len = 256  # a prompt of 33 tokens and 224 greedy ones: one continuation per row
  # Every distill*.jsonl there (4608 continuations, 1.2M tokens; the steps are set for that).
  # On 512 it learned the rows, not the target: train loss 0.74, eval 1.11 (docs/inference.md).
  c.data.sources = ({"paths": "runs/decode_draft/distill*.jsonl", "weight": 1.0},)
  c.model.update(d_model=256, n_layers=4, n_heads=4, n_kv_heads=1, d_ff=768)
  c.train.update(steps=1000, batch_size=16, lr=3e-3, log_every=10, eval_every=250,
                 eval_batches=4)  # warm-up and checkpoints: the target's
  return c
