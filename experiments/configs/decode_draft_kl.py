"""The speculative draft for sampling at temperature 1 (issue 30 item 4; not yet run): the shape
of decode_draft.py (3.5M parameters, MQA), trained on the target's continuations *sampled* at
temperature 1 with half its cross-entropy and the forward KL(target || draft) at temperature 1
over the target's top 32 tokens (train/kl_distill.py), the target's distribution computed by its
frozen forward pass over every batch (distill.target_workdir). docs/inference.md has the recipe
and its estimated cost:

  python -m experiments.distill_data --target=runs/decode_target --temperature=1 --seed=10 \
      --prompts=2048 --out=runs/decode_draft_kl/distill_t1_s10.jsonl
  python -m experiments.distill_data --target=runs/decode_target --temperature=1 --seed=11 \
      --prompts=2048 --out=runs/decode_draft_kl/distill_t1_s11.jsonl
  cp runs/decode_target/tokenizer.json runs/decode_draft_kl/
  python -m experiments.train --workdir=runs/decode_draft_kl --config=experiments/configs/decode_draft_kl.py
"""

import ml_collections

from experiments.configs import decode_draft
from train import config as config_lib


def get_config() -> ml_collections.ConfigDict:
  c = decode_draft.get_config()
  c.data.sources = ({"paths": "runs/decode_draft_kl/distill_t1_*.jsonl", "weight": 1.0},)
  c.distill = config_lib.section(config_lib.DistillSettings, target_workdir="runs/decode_target",
                                 kl_weight=1.0, lm_weight=0.5, temperature=1.0, top_k=32)
  return c
