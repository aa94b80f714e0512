"""The muP transfer study's analysis: best learning rate per width, and its drift."""

import math

import pytest

from train.studies import mup_transfer


def test_parabola_minimum_finds_the_vertex_between_grid_points():
  # y = (x - 1.3)^2 sampled at 0, 1, 2, 3: the vertex is 1.3 exactly; a sign error in b or the
  # neighbours taken off by one would move it.
  xs = [0.0, 1.0, 2.0, 3.0]
  x, interior = mup_transfer.parabola_minimum(xs, [(x - 1.3) ** 2 for x in xs])
  assert interior and x == pytest.approx(1.3)
  edge, interior = mup_transfer.parabola_minimum(xs, [3.0, 2.0, 1.0, 0.5])
  assert (edge, interior) == (3.0, False)


def _rows(param, width, best_log2):
  # Loss parabolic in log2(lr) around best_log2, two seeds 0.02 apart.
  out = []
  for k in range(-8, -2):
    for seed, shift in ((0, 0.0), (1, 0.02)):
      out.append({"parametrization": param, "width": width, "lr": 2.0 ** k, "seed": seed,
                  "eval_loss": 3.0 + 0.1 * (k - best_log2) ** 2 + shift})
  return out


def test_analyse_reports_each_widths_best_lr_and_the_drift():
  rows = (_rows("sp", 32, -4.0) + _rows("sp", 256, -6.5)
          + _rows("mup", 32, -5.0) + _rows("mup", 256, -5.0))
  a = mup_transfer.analyse(rows)
  assert a["sp"]["widths"]["32"]["best_lr"] == pytest.approx(2 ** -4.0)
  assert a["sp"]["widths"]["256"]["best_lr"] == pytest.approx(2 ** -6.5)
  # widest over narrowest: 2^-2.5 under SP (swapping them would give 2^2.5), 1 under muP.
  assert a["sp"]["drift"] == pytest.approx(2 ** -2.5)
  assert a["mup"]["drift"] == pytest.approx(1.0)
  assert a["sp"]["widths"]["32"]["spread"][0] == pytest.approx(0.02)
  assert a["sp"]["widths"]["32"]["mean_loss"][4] == pytest.approx(3.01)
  assert math.isclose(a["mup"]["widths"]["32"]["best_loss"], 3.01)
