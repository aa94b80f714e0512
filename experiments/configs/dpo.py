"""DPO on arithmetic preference pairs (chosen the answer, rejected a near miss), from an SFT run.

  python -m experiments.dpo --workdir=runs/dpo --init_workdir=runs/sft
"""

import ml_collections

from experiments.configs import alignment


def get_config() -> ml_collections.ConfigDict:
  c = alignment.base()
  c.train.steps = 200
  c.train.lr = 1e-4  # DPO moves a trained policy: a pretraining-size step would wreck it
  c.train.warmup_steps = 10
  c.train.eval_every = 50

  c.dpo = ml_collections.ConfigDict()
  c.dpo.loss_type = "sigmoid"  # sigmoid | ipo | hinge | robust
  c.dpo.beta = 0.1  # the paper's typical value
  c.dpo.label_smoothing = 0.0  # robust only: the assumed rate of flipped preference labels
  # Reference log-probs computed once over the training pairs and stored in the workdir, so the
  # reference model is not held in memory nor run at every step; False keeps a live reference.
  c.dpo.precompute_ref = True
  return c
