"""The fault suite: every way a run gets hurt, done for real to the command line (issue 28).

  python -m experiments.faults [--cases=kill9_random_step,two_runs_one_workdir,...]
      [--out=results/faults] [--steps=8] [--seed=0] [--keep]

Each case runs experiments.train (or convert, prepare_data) on the tiny config as a subprocess in
its own temporary folder: kill -9 at a random step and mid-save, SIGTERM then resume, a damaged
newest checkpoint, a full disk (RLIMIT_FSIZE) during a save, at start and while preparing data,
two runs on one workdir, a corrupt shard byte, a shard id out of range, a changed source file,
convert --to_hf into a workdir, and the bad inputs (read-only or file or empty --workdir, a
missing config file with overrides, truncated or empty safetensors, an infinite mixture weight,
a corpus path with `[`). It records per case: passed, the last stderr line, whether a traceback
was printed, and what was lost (checkpoints, steps, the resumed losses against an uninterrupted
reference run). Writes <out>/results.json; make faults runs it. The cases live in
train/studies/fault_cases.py, the harness in train/studies/faults.py.
"""

from absl import flags

from train import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script (cli.run defines them before parsing)."""
  flags.DEFINE_list("cases", [], "Cases to run (default: all); 'reference' always runs first.")
  flags.DEFINE_string("out", "results/faults", "Where results.json goes.")
  flags.DEFINE_integer("steps", 8, "train.steps of every run (a checkpoint every 2 steps).")
  flags.DEFINE_integer("seed", 0, "Seeds the random kill points.")
  flags.DEFINE_boolean("keep", False, "Keep the temporary folder of the cases (its path is "
                       "printed) to look at what each left behind.")


def main(argv):
  del argv
  cli.setup()
  from train.studies import fault_cases

  unknown = sorted(set(FLAGS.cases) - set(fault_cases.CASES))
  if unknown:
    cli.fail(ValueError(f"--cases: unknown case {unknown[0]}; known: "
                        f"{', '.join(fault_cases.CASES)}"))
  names = FLAGS.cases or list(fault_cases.CASES)
  results = fault_cases.run_suite(names, FLAGS.out, steps=FLAGS.steps, seed=FLAGS.seed,
                                  keep=FLAGS.keep)
  print(f"{results['passed']} of {results['total']} cases passed; failed: "
        f"{', '.join(results['failed']) or 'none'}; wrote {FLAGS.out}/results.json", flush=True)


if __name__ == "__main__":
  cli.run(main, define_flags)
