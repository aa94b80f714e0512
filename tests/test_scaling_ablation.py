"""The ablation table's accounting and tokens per parameter, by hand."""

import pytest

from train.studies import scaling_ablation as ablation


def test_accounting_reads_non_embedding_6nd_or_total_full_flops():
  # Catches the two accountings swapped, and an old results.jsonl row (N, C only) misread.
  new = {"N": 5, "C": 7, "params": 10, "params_non_embedding": 4, "flops": 900.0,
         "flops_6nd": 480.0, "D": 20}
  old = {"N": 4, "C": 480.0, "params": 10, "flops": 900.0, "D": 20}
  for row in (new, old):
    kaplan, = ablation.as_accounting([row], "kaplan")
    full, = ablation.as_accounting([row], "full")
    assert (kaplan["N"], kaplan["C"]) == (4, 480.0)
    assert (full["N"], full["C"]) == (10, 900.0)


def test_tokens_per_param_uses_the_flops_per_token_at_the_optimum():
  # Sizes 100 and 10,000 at 1e3 and 1e5 FLOPs per token: log-log interpolation gives 1e4 at
  # N = 1,000, so a budget of 1e10 is 1e6 tokens, 1,000 per parameter. Using 6N (6e3) instead, or
  # interpolating linearly (5.05e4), gives another number.
  rows = [{"N": 100, "C": 1e3 * 50, "D": 50}, {"N": 10_000, "C": 1e5 * 50, "D": 50}]
  assert ablation.tokens_per_param_at(rows, 1e10, 1_000) == pytest.approx(1_000)


def test_markdown_marks_an_unidentified_E_and_missing_fits():
  text = ablation.markdown([
      {"protocol": "(i)", "runs": 3, "a_law": 0.6, "a_law_ci": [0.5, 0.7], "E": 0.0,
       "E_ci": [0.0, 0.6], "E_identified": False},
      {"protocol": "(ii)", "runs": 5, "a_isoflop": 0.51, "a_isoflop_ci": [0.4, 0.6],
       "tokens_per_param": 21.4, "largest_budget": 1e12}])
  lines = text.splitlines()
  assert lines[2] == "| (i) | 3 | 0.60 [0.50, 0.70] | - | - | 0.00 [0.00, 0.60] (not identified) |"
  assert lines[3] == "| (ii) | 5 | - | 0.51 [0.40, 0.60] | 21 (C = 1e+12) | - |"


def test_ablation_rows_parse_accounting_isoflop_and_budget_cap():
  # A cap parsed but ignored (inf) would compare rows over different budgets without a word.
  from experiments.scaling_ablation import parse_row

  assert parse_row("(iv) a=r.jsonl:full:iso:upto3e12") == ("(iv) a", "r.jsonl", "full", True, 3e12)
  assert parse_row("(i) b=r.jsonl:kaplan") == ("(i) b", "r.jsonl", "kaplan", False, float("inf"))
  for bad in ("c=r.jsonl:full:uptoX", "c=r.jsonl:other", "c=r.jsonl:full:isoflop", "r.jsonl:full"):
    with pytest.raises(ValueError, match="expected LABEL"):
      parse_row(bad)
