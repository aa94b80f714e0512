"""The alignment study: SFT -> DPO -> GRPO at several seeds, chosen on validation, reported on test.

  python -m experiments.alignment_study [--config=experiments/configs/alignment_study.py]

Each stage runs its own config file's settings (sft.py, dpo.py, grpo.py; here as the sections
`sft`, `dpo`, `grpo`, each a whole stage config: --config.grpo.train.lr=3e-5 sets one), except
what the study varies per run:

  seeds          train.seed of every stage (the model's initialisation, the batch order, GRPO's
                 sampling); the task's problems (task.seed) and so the validation and test sets
                 stay fixed;
  nll_weights    DPO's dpo.nll_weight grid, each from the same SFT run of a seed; the study keeps
                 the one with the best final validation accuracy, mean over seeds;
  grpo_max_steps GRPO's train.steps (the cosine schedule spans them), from the chosen DPO run,
                 evaluated on validation and checkpointed every grpo_eval_every steps; the study
                 keeps the step with the best validation accuracy, mean over seeds, and scores the
                 test set at that step's checkpoint.

train/studies/alignment_study.py has the protocol. `:tiny` is a one-seed, two-weight, two-step
version on a 1-layer model for tests.
"""

import ml_collections

import experiments.configs as configs
from experiments.configs import dpo, grpo, sft


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.study = "alignment_study"
  c.sft, c.dpo, c.grpo = sft.get_config(), dpo.get_config(), grpo.get_config()
  c.seeds = (0, 1, 2)
  # Plain DPO, the stage's default (0.2, chosen on held-out problems before the validation split,
  # docs/alignment.md) and a strong NLL term.
  c.nll_weights = (0.0, 0.2, 1.0)
  # The stage's default is 500 steps, chosen by looking at the test problems: the study runs
  # past it and lets validation pick, at 50-step resolution (the stage's eval_every).
  c.grpo_max_steps = 600
  c.grpo_eval_every = 50

  c.launch = configs.launch_section("llmlab-alignment", "02:00:00")

  if preset == "tiny":
    _shrink(c)
  elif preset:
    raise ValueError(f"unknown preset {preset!r}; allowed: tiny")
  return c


def _shrink(c: ml_collections.ConfigDict) -> None:
  """The `tiny` preset: a 1-layer model of width 32, 64 training problems, 8 validation and 8
  test problems, 2 steps per stage, GRPO evaluated (and checkpointed) every step."""
  c.sft.model.update(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64)
  for stage in ("sft", "dpo", "grpo"):
    s = c[stage]
    s.task.update(n_train=64, n_validation=8, n_heldout=8)
    s.eval.update(batch_size=8, max_new_tokens=4)
    s.train.update(steps=2, batch_size=4, warmup_steps=1, log_every=1, eval_every=2,
                   loggers=("jsonl",))  # TensorBoard's writer imports torch: seconds per run
    s.checkpoint.update(every_steps=1, async_save=False)
  c.grpo.grpo.update(prompts_per_step=2, group_size=2, max_new_tokens=4)
  c.seeds = (0,)
  c.nll_weights = (0.0, 1.0)
  c.grpo_max_steps = 2
  c.grpo_eval_every = 1
