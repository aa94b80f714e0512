"""Scaling laws: the Chinchilla fit of L(N, D), isoFLOP minima, and bootstrap intervals.

Two of the Chinchilla paper's three approaches (Hoffmann et al. 2022):
  * the parametric law L(N, D) = E + A / N^alpha + B / D^beta, fitted by minimising the Huber loss
    between the predicted and observed log-loss, from a grid of initialisations, with L-BFGS
    (approach 3). The prediction is written as a log-sum-exp of (a - alpha log N, b - beta log D, e)
    with A = e^a, B = e^b, E = e^e, so A, B, E stay positive without constraints;
  * isoFLOP profiles: for each compute budget C, a parabola of loss against log N whose minimum is
    the compute-optimal N(C); a line through log N_opt against log C gives its exponent
    (approach 2). D_opt = C / (6 N_opt).
Bootstrap intervals come from refitting on runs resampled with replacement. A resample is a
vector of integer weights on the runs, so the shapes never change and the refits vectorise.

The optimisation runs in float64: the Huber threshold (1e-3 on log L) is close enough to float32
rounding of the objective's sum that float32 line searches stall.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

# The Chinchilla paper's initialisation grid (alpha, beta, e, a, b): 5 * 5 * 5 * 6 * 6 = 4500 starts.
CHINCHILLA_GRID = {
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
}
# Smaller grids over the same ranges, for quick fits: 3^5 = 243 and 2^5 = 32 starts.
COARSE_GRID = {"alpha": (0.0, 0.5, 1.0), "beta": (0.0, 0.5, 1.0), "e": (-1.0, 0.0, 1.0),
               "a": (0.0, 5.0, 10.0), "b": (0.0, 5.0, 10.0)}
MINIMAL_GRID = {"alpha": (0.5, 1.0), "beta": (0.5, 1.0), "e": (-1.0, 1.0), "a": (5.0, 10.0),
                "b": (5.0, 10.0)}
GRIDS = {"chinchilla": CHINCHILLA_GRID, "coarse": COARSE_GRID, "minimal": MINIMAL_GRID}
_ORDER = ("a", "b", "e", "alpha", "beta")  # layout of the parameter vector theta


@dataclasses.dataclass(frozen=True)
class ChinchillaFit:
  """L(N, D) = E + A / N^alpha + B / D^beta, and the objective value it reached."""

  E: float
  A: float
  B: float
  alpha: float
  beta: float
  objective: float = float("nan")

  def loss(self, n, d):
    return self.E + self.A / np.power(n, self.alpha) + self.B / np.power(d, self.beta)

  @property
  def n_exponent(self) -> float:
    """a in N_opt ~ C^a: beta / (alpha + beta)."""
    return self.beta / (self.alpha + self.beta)

  @property
  def d_exponent(self) -> float:
    """b in D_opt ~ C^b: alpha / (alpha + beta)."""
    return self.alpha / (self.alpha + self.beta)

  def optimal_n(self, c):
    """Compute-optimal N for C = 6 N D FLOPs: minimises loss(N, C / 6N) in closed form."""
    g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))
    return g * np.power(np.asarray(c, np.float64) / 6.0, self.n_exponent)

  def frontier(self, c):
    """The lowest loss reachable with C FLOPs: loss at (optimal_n(C), C / 6 optimal_n(C))."""
    n = self.optimal_n(c)
    return self.loss(n, np.asarray(c, np.float64) / (6.0 * n))

  def to_dict(self) -> dict:
    return dataclasses.asdict(self) | {"n_exponent": self.n_exponent, "d_exponent": self.d_exponent}


def init_grid(grid="chinchilla") -> np.ndarray:
  """(S, 5) starting points in the (a, b, e, alpha, beta) layout, from a grid's name in GRIDS or
  a dict of values per parameter; default: Chinchilla's grid."""
  if isinstance(grid, str):
    if grid not in GRIDS:
      raise ValueError(f"fit.grid={grid!r} is unknown; allowed: {', '.join(GRIDS)}")
    grid = GRIDS[grid]
  return np.array(list(itertools.product(*(grid[k] for k in _ORDER))), np.float64)


def _predicted_log_loss(theta, log_n_R, log_d_R):
  a, b, e, alpha, beta = theta
  terms_Rx3 = jnp.stack(
      [a - alpha * log_n_R, b - beta * log_d_R, jnp.broadcast_to(e, log_n_R.shape)], axis=-1)
  return jax.nn.logsumexp(terms_Rx3, axis=-1)


def _huber(r, delta):
  abs_r = jnp.abs(r)
  return jnp.where(abs_r <= delta, 0.5 * r * r, delta * (abs_r - 0.5 * delta))


def _objective(theta, log_n_R, log_d_R, log_l_R, weight_R, delta):
  r = _predicted_log_loss(theta, log_n_R, log_d_R) - log_l_R
  return jnp.sum(weight_R * _huber(r, delta))


def _minimise(fun, theta0, max_iter: int, tol: float):
  """L-BFGS with a zoom line search from theta0, until the gradient norm is below tol."""
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(fun)

  def step(carry):
    theta, state = carry
    value, grad = value_and_grad(theta, state=state)
    updates, state = opt.update(grad, state, theta, value=value, grad=grad, value_fn=fun)
    return optax.apply_updates(theta, updates), state

  def go_on(carry):
    _, state = carry
    count, grad = otu.tree_get(state, "count"), otu.tree_get(state, "grad")
    return (count == 0) | ((count < max_iter) & (otu.tree_norm(grad) >= tol))

  theta, _ = jax.lax.while_loop(go_on, step, (theta0, opt.init(theta0)))
  return theta, fun(theta)


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _fit_all(log_n_R, log_d_R, log_l_R, weights_WxR, inits_SxP, delta, max_iter, tol):
  """Every (weight vector, start) pair minimised: thetas (W, S, 5) and objectives (W, S)."""

  def one(weight_R, theta0):
    fun = lambda th: _objective(th, log_n_R, log_d_R, log_l_R, weight_R, delta)  # noqa: E731
    theta, value = _minimise(fun, theta0, max_iter, tol)
    return theta, jnp.where(jnp.isfinite(value), value, jnp.inf)

  over_starts = jax.vmap(one, in_axes=(None, 0))
  return jax.vmap(over_starts, in_axes=(0, None))(weights_WxR, inits_SxP)


def _check(n, d, loss) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  n, d, loss = (np.asarray(x, np.float64).ravel() for x in (n, d, loss))
  if not (len(n) == len(d) == len(loss)):
    raise ValueError(f"n, d and loss must have one entry per run, got {len(n)}, {len(d)}, {len(loss)}")
  if len(n) < 5:
    raise ValueError(f"the Chinchilla law has 5 parameters; fitting it needs at least 5 runs, got {len(n)}")
  if np.any(n <= 0) or np.any(d <= 0) or np.any(loss <= 0) or not np.all(np.isfinite(loss)):
    raise ValueError("n, d and loss must be positive and finite")
  return n, d, loss


def _to_fit(theta, objective) -> ChinchillaFit:
  a, b, e, alpha, beta = (float(x) for x in theta)
  return ChinchillaFit(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)),
                       alpha=alpha, beta=beta, objective=float(objective))


def fit_chinchilla(
    n: Sequence[float], d: Sequence[float], loss: Sequence[float], *,
    delta: float = 1e-3, inits: Optional[np.ndarray] = None, max_iter: int = 500,
    tol: float = 1e-10,
) -> tuple[ChinchillaFit, np.ndarray]:
  """Fits L(N, D) by Huber loss on log L from every start in `inits` (default: Chinchilla's
  4500-point grid); returns the best fit and the starts ranked by the objective they reached
  (the best first), which seed the bootstrap refits."""
  n, d, loss = _check(n, d, loss)
  inits = init_grid() if inits is None else np.asarray(inits, np.float64)
  with jax.enable_x64(True):
    thetas, values = _fit_all(
        jnp.log(n), jnp.log(d), jnp.log(loss), jnp.ones((1, len(n))), jnp.asarray(inits),
        delta, max_iter, tol)
    thetas, values = np.asarray(thetas[0]), np.asarray(values[0])
  order = np.argsort(values, kind="stable")
  return _to_fit(thetas[order[0]], values[order[0]]), inits[order]


def bootstrap_weights(n_runs: int, n_resamples: int, seed: int) -> np.ndarray:
  """(n_resamples, n_runs) counts: how often each run is drawn when resampling with replacement."""
  rng = np.random.default_rng(seed)
  draws = rng.integers(0, n_runs, size=(n_resamples, n_runs))
  counts = np.zeros((n_resamples, n_runs), np.float64)
  for i, row in enumerate(draws):
    counts[i] = np.bincount(row, minlength=n_runs)
  return counts


def bootstrap_chinchilla(
    n, d, loss, *, n_resamples: int = 200, seed: int = 0, inits: Optional[np.ndarray] = None,
    delta: float = 1e-3, max_iter: int = 500, tol: float = 1e-10,
) -> list[ChinchillaFit]:
  """The law refitted on `n_resamples` resamples of the runs, each from every start in `inits`
  (pass the best few starts of the full fit: refitting from all 4500 costs 4500x more)."""
  n, d, loss = _check(n, d, loss)
  inits = init_grid() if inits is None else np.asarray(inits, np.float64)
  weights = bootstrap_weights(len(n), n_resamples, seed)
  with jax.enable_x64(True):
    thetas, values = _fit_all(jnp.log(n), jnp.log(d), jnp.log(loss), jnp.asarray(weights),
                              jnp.asarray(inits), delta, max_iter, tol)
    thetas, values = np.asarray(thetas), np.asarray(values)
  best = np.argmin(values, axis=1)
  return [_to_fit(thetas[w, best[w]], values[w, best[w]]) for w in range(n_resamples)]


@dataclasses.dataclass(frozen=True)
class IsoFlopFit:
  """Compute-optimal sizes from isoFLOP profiles: N_opt = 10^n_intercept C^n_exponent, and the
  same for D."""

  budgets: tuple[float, ...]  # budgets whose profile had an interior minimum
  n_opt: tuple[float, ...]
  d_opt: tuple[float, ...]
  loss_opt: tuple[float, ...]
  n_exponent: float
  n_intercept: float
  d_exponent: float
  d_intercept: float

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def isoflop_minimum(n: Sequence[float], loss: Sequence[float]) -> Optional[tuple[float, float]]:
  """(N_opt, loss at N_opt) from a parabola in log N through one budget's runs, or None when the
  profile has fewer than 3 sizes, curves the wrong way, or its minimum lies outside the sizes run
  (an extrapolated minimum is not a measurement)."""
  log_n, loss = np.log(np.asarray(n, np.float64)), np.asarray(loss, np.float64)
  if len(np.unique(log_n)) < 3:
    return None
  c2, c1, c0 = np.polyfit(log_n, loss, 2)
  if c2 <= 0:
    return None
  x = -c1 / (2 * c2)
  if not log_n.min() <= x <= log_n.max():
    return None
  return float(np.exp(x)), float(c0 + c1 * x + c2 * x * x)


def fit_isoflop(budget, n, loss, tokens_per_flop: float = 1 / 6) -> Optional[IsoFlopFit]:
  """Groups runs by their nominal budget C, finds each profile's minimum, and fits the power laws
  N_opt ~ C^a, D_opt ~ C^b through them (D_opt = C * tokens_per_flop / N_opt). None when fewer than
  two budgets have a minimum."""
  budget, n, loss = (np.asarray(x, np.float64).ravel() for x in (budget, n, loss))
  rows = []
  for c in np.unique(budget):
    found = isoflop_minimum(n[budget == c], loss[budget == c])
    if found is not None:
      rows.append((c, found[0], c * tokens_per_flop / found[0], found[1]))
  if len(rows) < 2:
    return None
  c, n_opt, d_opt, l_opt = (np.array(col) for col in zip(*rows))
  n_exp, n_int = np.polyfit(np.log10(c), np.log10(n_opt), 1)
  d_exp, d_int = np.polyfit(np.log10(c), np.log10(d_opt), 1)
  return IsoFlopFit(tuple(c.tolist()), tuple(n_opt.tolist()), tuple(d_opt.tolist()),
                    tuple(l_opt.tolist()), float(n_exp), float(n_int), float(d_exp), float(d_int))


def bootstrap_isoflop(budget, n, loss, *, n_resamples: int = 200, seed: int = 0) -> list[IsoFlopFit]:
  """isoFLOP fits on resampled runs; resamples that leave fewer than two minima are dropped."""
  budget, n, loss = (np.asarray(x, np.float64).ravel() for x in (budget, n, loss))
  out = []
  for w in bootstrap_weights(len(n), n_resamples, seed):
    idx = np.repeat(np.arange(len(n)), w.astype(int))
    fit = fit_isoflop(budget[idx], n[idx], loss[idx])
    if fit is not None:
      out.append(fit)
  return out


def interval(values: Sequence[float], level: float = 0.9) -> tuple[float, float]:
  """The central `level` percentile interval of bootstrap values (nan when there are none)."""
  values = np.asarray([v for v in values if np.isfinite(v)], np.float64)
  if len(values) == 0:
    return float("nan"), float("nan")
  lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
  return float(lo), float(hi)
