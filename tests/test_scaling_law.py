"""train/studies/scaling_law.py: the fits recover the constants of a known law from noisy losses."""

import numpy as np
import pytest

from train.studies import scaling_law as sl

TRUE = sl.ChinchillaFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def _synthetic(noise: float, seed: int = 0):
  """Losses of the Chinchilla law on a grid of sizes and token counts, with log-normal noise."""
  n = np.repeat(np.geomspace(1e6, 1e9, 6), 5)
  d = np.tile(np.geomspace(1e8, 1e11, 5), 6)
  rng = np.random.default_rng(seed)
  return n, d, TRUE.loss(n, d) * np.exp(rng.normal(0.0, noise, n.shape))


@pytest.fixture(scope="module")
def noisy_fit():
  n, d, loss = _synthetic(noise=0.005)
  fit, ranked = sl.fit_chinchilla(n, d, loss, inits=sl.init_grid("minimal"), max_iter=200)
  return (n, d, loss), fit, ranked


def test_fit_recovers_known_constants_from_noisy_losses(noisy_fit):
  _, fit, _ = noisy_fit
  assert fit.alpha == pytest.approx(TRUE.alpha, abs=0.03)
  assert fit.beta == pytest.approx(TRUE.beta, abs=0.03)
  assert fit.E == pytest.approx(TRUE.E, abs=0.1)
  assert fit.n_exponent == pytest.approx(TRUE.n_exponent, abs=0.03)
  n, d = np.geomspace(1e6, 1e9, 7), np.geomspace(1e8, 1e11, 7)
  np.testing.assert_allclose(fit.loss(n, d), TRUE.loss(n, d), rtol=0.01)


def test_bootstrap_intervals_cover_the_true_exponents(noisy_fit):
  (n, d, loss), _, ranked = noisy_fit
  boots = sl.bootstrap_chinchilla(n, d, loss, n_resamples=24, seed=0, inits=ranked[:4],
                                  max_iter=200)
  for name in ("alpha", "beta", "n_exponent"):
    lo, hi = sl.interval([getattr(b, name) for b in boots], 0.9)
    assert lo <= getattr(TRUE, name) <= hi, (name, lo, hi)
    assert hi - lo < 0.2


def test_closed_form_optimum_minimises_the_law():
  c = 1e21
  n_grid = np.geomspace(1e8, 1e12, 20001)
  best = n_grid[np.argmin(TRUE.loss(n_grid, c / (6 * n_grid)))]
  assert TRUE.optimal_n(c) == pytest.approx(best, rel=1e-3)
  assert TRUE.frontier(c) == pytest.approx(TRUE.loss(best, c / (6 * best)), rel=1e-9)


def test_isoflop_minima_recover_the_compute_optimal_exponents():
  budgets, sizes, losses = [], [], []
  for c in (1e18, 1e19, 1e20, 1e21):
    for n in TRUE.optimal_n(c) * np.geomspace(0.25, 4, 7):
      budgets.append(c), sizes.append(n), losses.append(TRUE.loss(n, c / (6 * n)))
  iso = sl.fit_isoflop(budgets, sizes, losses)
  assert iso.n_exponent == pytest.approx(TRUE.n_exponent, abs=0.01)
  assert iso.d_exponent == pytest.approx(TRUE.d_exponent, abs=0.01)
  boots = sl.bootstrap_isoflop(budgets, sizes, losses, n_resamples=20, seed=0)
  lo, hi = sl.interval([b.n_exponent for b in boots])
  assert lo <= TRUE.n_exponent + 0.01 and hi >= TRUE.n_exponent - 0.01


def test_isoflop_minimum_at_the_edge_is_not_reported():
  assert sl.isoflop_minimum([1, 2, 4, 8], [4.0, 3.0, 2.5, 2.2]) is None  # still falling
  assert sl.isoflop_minimum([1, 2], [3.0, 2.0]) is None


def test_too_few_runs_is_an_error():
  with pytest.raises(ValueError, match="at least 5 runs"):
    sl.fit_chinchilla([1e6] * 4, [1e9] * 4, [3.0] * 4)
