"""Which results files are current with the code, and which README rows quote stale ones.

  python -m experiments.results_status [--json]

For every results/**/results.json: its recorded commit, the dirty flag, the date, and whether a
file its script depends on (the script named in its provenance and the script's imports within
this repository, traced without running them) changed since that commit
(train/results_status.py). Then the README table's rows that link results files, each current,
unverified (no provenance, or reconstructed after the fact) or stale. Reads git; imports no jax.
"""

from __future__ import annotations

from absl import app, flags

from train import results_status

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script."""
  flags.DEFINE_bool("json", False, "Print the machine-readable form instead of the table.")


def main(argv) -> None:
  del argv
  entries = results_status.collect()
  table = results_status.rows(results_status.REPO_ROOT, entries)
  print(results_status.as_json(entries, table) if FLAGS.json
        else results_status.as_text(entries, table))


if __name__ == "__main__":
  define_flags()
  app.run(main)
