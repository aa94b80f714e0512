"""Mixture of Experts: a router sends each token to top_k of n_experts SwiGLU experts.

Shapes: N tokens (batch and length flattened), D model width, E experts, F expert hidden width,
k experts per token, C expert capacity.

Two dispatch styles:
  capacity  each expert takes at most C = capacity_factor * N * k / E tokens, laid out in an
            (E, C, D) buffer; overflow assignments are dropped (the residual path carries the
            token) and the drop fraction is reported. Static shapes, the TPU-friendly classic.
  dropless  assignments sorted by expert and run through grouped matmuls (jax.lax.ragged_dot):
            every token reaches its experts, whatever the imbalance.

Expert parallelism (an ExpertExchange, supplied by sharding/, never built here): each device
holds E / S of the experts and routes only its own tokens. It lays them out in the (E, C, D)
capacity buffer, and one all-to-all sends every expert's block to the device that holds the
expert; the experts run, and the same all-to-all brings the results back. Expert weights never
move. C counts one device's tokens: capacity dispatch gives each expert C = capacity_factor * N
* k / E slots per sending device (GShard's per-group capacity, the same that plain data
parallelism gives each device), so tokens drop exactly where they drop under data parallelism
without an expert axis. Dropless dispatch uses C = N: top_k picks distinct experts, so no expert
can receive more than N of a device's tokens and nothing drops, at the price of a buffer E / k
times larger than the assignments (a static-shape stand-in for a ragged all-to-all).

Losses (both returned unweighted; the model scales them by their config weights):
  load balancing (Switch)  E * sum_i f_i P_i, f_i the share of assignments routed to expert i,
                           P_i the mean router probability of i; 1 exactly at uniform routing.
  router z-loss (ST-MoE)   mean over tokens of logsumexp(router logits)^2.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from model import fields

DISPATCHES = ("capacity", "dropless")
# Evaluation's dispatch: "same" as training, or its own (dropless, or capacity at
# eval_capacity_factor). Capacity drops in evaluation make the held-out loss depend on how many
# similar rows share a batch, not only on the model.
EVAL_DISPATCHES = ("dropless", "capacity", "same")
# Expert init: "match_dense" scales each expert's output projection so the layer's output RMS at
# init matches a dense SwiGLU of width d_ff (expert_out_gain); "standard" inits it as dense's.
INIT_SCALES = ("match_dense", "standard")


@dataclasses.dataclass(frozen=True)
class MoEConfig:
  """n_experts = 0 means a dense model. every = k makes every k-th layer an MoE layer."""

  n_experts: int = 0  # 0 = dense; e.g. 8 for a Mixtral-style MoE
  top_k: int = 2
  every: int = 1  # every k-th layer is MoE
  d_expert: int = 0  # hidden width of each expert; 0 = model.d_ff
  capacity_factor: float = 1.25
  dispatch: str = "dropless"  # or "capacity" (see the module docstring)
  aux_loss_weight: float = 1e-2
  z_loss_weight: float = 1e-3
  eval_dispatch: str = "dropless"  # see EVAL_DISPATCHES; training keeps `dispatch`
  eval_capacity_factor: float = 2.0  # with eval_dispatch = "capacity"
  init_scale: str = "match_dense"  # see INIT_SCALES

  def __post_init__(self):
    if self.n_experts < 0:
      raise ValueError(f"model.moe.n_experts must be >= 0 (0 = dense), got {self.n_experts}")
    if not self.enabled:
      return
    if not 1 <= self.top_k <= self.n_experts:
      raise ValueError(
          f"model.moe.top_k={self.top_k} must be between 1 and model.moe.n_experts={self.n_experts}")
    if self.every < 1:
      raise ValueError(f"model.moe.every must be >= 1, got {self.every}")
    if self.d_expert < 0:
      raise ValueError(f"model.moe.d_expert must be >= 0 (0 = model.d_ff), got {self.d_expert}")
    if self.dispatch not in DISPATCHES:
      raise ValueError(
          f"model.moe.dispatch={self.dispatch!r} is unknown; allowed: {', '.join(DISPATCHES)}")
    if self.dispatch == "capacity" and not self.capacity_factor > 0:
      raise ValueError(
          f"model.moe.capacity_factor={self.capacity_factor} must be > 0 with capacity dispatch")
    if self.aux_loss_weight < 0 or self.z_loss_weight < 0:
      raise ValueError("model.moe.aux_loss_weight and model.moe.z_loss_weight must be >= 0")
    if self.eval_dispatch not in EVAL_DISPATCHES:
      raise ValueError(f"model.moe.eval_dispatch={self.eval_dispatch!r} is unknown; allowed: "
                       f"{', '.join(EVAL_DISPATCHES)}")
    if self.eval_dispatch == "capacity" and not self.eval_capacity_factor > 0:
      raise ValueError(f"model.moe.eval_capacity_factor={self.eval_capacity_factor} must be > 0 "
                       "with model.moe.eval_dispatch=capacity")
    if self.init_scale not in INIT_SCALES:
      raise ValueError(f"model.moe.init_scale={self.init_scale!r} is unknown; allowed: "
                       f"{', '.join(INIT_SCALES)}")

  @property
  def enabled(self) -> bool:
    return self.n_experts > 0

  @classmethod
  def from_dict(cls, d: dict) -> "MoEConfig":
    return fields.from_dict(cls, d, "model.moe")

  def for_eval(self) -> "MoEConfig":
    """This layer as evaluation runs it: dispatch and capacity factor from eval_dispatch."""
    if not self.enabled or self.eval_dispatch == "same":
      return self
    if self.eval_dispatch == "dropless":
      return dataclasses.replace(self, dispatch="dropless")
    return dataclasses.replace(self, dispatch="capacity", capacity_factor=self.eval_capacity_factor)


@functools.lru_cache(maxsize=None)
def gate_power_at_init(n_experts: int, top_k: int, logit_std: float, samples: int = 16384) -> float:
  """E[sum_k w_k^2], the combine weights' squared sum for one token at init, where the router
  logits are iid N(0, logit_std^2) (a unit-RMS input times a router of std init_std gives
  logit_std = init_std * sqrt(d_model)). Uniform routing would give 1/k for k > 1 (weights
  renormalised to 1/k each) and 1/E^2 for k = 1 (the gate is the chosen probability); the
  largest of E random probabilities is above 1/E, so this is measured, by a fixed-seed Monte
  Carlo (its standard error is below 1% at the default samples)."""
  logits_SxE = np.random.default_rng(0).normal(0.0, logit_std, (samples, n_experts))
  probs_SxE = np.exp(logits_SxE - logits_SxE.max(-1, keepdims=True))
  probs_SxE /= probs_SxE.sum(-1, keepdims=True)
  top_SxK = -np.sort(-probs_SxE, axis=-1)[:, :top_k]
  w_SxK = top_SxK if top_k == 1 else top_SxK / top_SxK.sum(-1, keepdims=True)
  return float(np.mean(np.sum(w_SxK ** 2, axis=-1)))


def expert_out_gain(d_ff: int, d_expert: int, n_experts: int, top_k: int, logit_std: float) -> float:
  """The factor on each expert's output-projection init std that makes the MoE layer's output RMS
  at init equal a dense SwiGLU's of width d_ff (same input, same init std elsewhere).

  A SwiGLU's output variance is proportional to its hidden width (the down projection sums F
  terms), and the k experts' outputs are independent at init, so the layer's variance is dense's
  times (d_expert / d_ff) * E[sum_k w_k^2]: at d_expert = d_ff / k and near-uniform routing that is
  1/k^2 for top-k (k > 1) and about 1/E^2 for top-1. The gain is its inverse square root."""
  power = gate_power_at_init(n_experts, top_k, logit_std)
  return math.sqrt(d_ff / (d_expert * power))


class Routing(NamedTuple):
  """The router's decision for N tokens."""

  expert_NxK: jax.Array  # int32 expert ids, best first
  weight_NxK: jax.Array  # float32 combine weights, summing to 1 over k
  probs_NxE: jax.Array  # float32 softmax over all experts
  logits_NxE: jax.Array  # float32 router logits


class MoEStats(NamedTuple):
  """Per-layer statistics, averaged over tokens."""

  load_balance_loss: jax.Array  # scalar, unweighted
  z_loss: jax.Array  # scalar, unweighted
  drop_fraction: jax.Array  # scalar: share of assignments that found no room (0 if dropless)
  expert_share_E: jax.Array  # share of assignments received by each expert


@dataclasses.dataclass(frozen=True)
class ExpertExchange:
  """How an MoE layer reaches experts held by other devices. sharding/data_parallel.py builds it
  from the mesh; the model only calls it, so it never names a mesh axis.

  n_shards     S, the devices the experts are spread over; each holds E / S of them, device s
               experts s * E / S to (s + 1) * E / S - 1
  all_to_all   (S * G, ...) -> (S * G, ...): block s of G rows goes to device s, and block s of
               the result came from device s. Its own inverse, so it also brings results back
  token_mean   the mean of a per-device statistic over every device of the step: each holds the
               same number of tokens, so this is the mean over all tokens, as on one device
  """

  n_shards: int
  all_to_all: Callable[[jax.Array], jax.Array]
  token_mean: Callable[[jax.Array], jax.Array]


def route(x_NxD: jax.Array, w_router_DxE: jax.Array, top_k: int) -> Routing:
  """Softmax router in float32, top-k selection. With k > 1 the chosen weights are renormalised
  to sum to one (Mixtral); with k = 1 the gate is the chosen probability itself (Switch
  Transformer): renormalised, a single gate would be 1 whatever the router says, and the router
  would get no gradient from the loss, only from the auxiliary losses."""
  logits = jnp.einsum("nd,de->ne", x_NxD.astype(jnp.float32), w_router_DxE.astype(jnp.float32))
  probs = jax.nn.softmax(logits, axis=-1)
  top_p, top_e = jax.lax.top_k(probs, top_k)
  weights = top_p if top_k == 1 else top_p / jnp.sum(top_p, axis=-1, keepdims=True)
  return Routing(top_e.astype(jnp.int32), weights, probs, logits)


def load_balance_loss(r: Routing) -> jax.Array:
  """Switch loss E * sum_i f_i P_i (f_i counts all k assignments)."""
  n_experts = r.probs_NxE.shape[-1]
  f_E = expert_share(r.expert_NxK, n_experts)
  p_E = jnp.mean(r.probs_NxE, axis=0)
  return n_experts * jnp.sum(f_E * p_E)


def z_loss(r: Routing) -> jax.Array:
  return jnp.mean(jax.nn.logsumexp(r.logits_NxE, axis=-1) ** 2)


def expert_share(expert_NxK: jax.Array, n_experts: int) -> jax.Array:
  counts = jnp.zeros((n_experts,), jnp.float32).at[expert_NxK.reshape(-1)].add(1.0)
  return counts / expert_NxK.size


def dropless_moe(x_NxD, r: Routing, w_gate_ExDxF, w_up_ExDxF, w_down_ExFxD) -> jax.Array:
  """Sort the N*k assignments by expert, run grouped matmuls, scatter-add back, weighted."""
  n, k = r.expert_NxK.shape
  n_experts = w_gate_ExDxF.shape[0]
  expert_A = r.expert_NxK.reshape(-1)  # A = N * k assignments
  order_A = jnp.argsort(expert_A, stable=True)
  token_A = order_A // k  # the token each sorted assignment came from
  group_sizes_E = jnp.bincount(expert_A, length=n_experts).astype(jnp.int32)
  xs_AxD = x_NxD[token_A]
  h_gate = jax.lax.ragged_dot(xs_AxD, w_gate_ExDxF, group_sizes_E)
  h_up = jax.lax.ragged_dot(xs_AxD, w_up_ExDxF, group_sizes_E)
  ys_AxD = jax.lax.ragged_dot(jax.nn.silu(h_gate) * h_up, w_down_ExFxD, group_sizes_E)
  weight_A = r.weight_NxK.reshape(-1)[order_A]
  out = jnp.zeros((n, x_NxD.shape[-1]), jnp.float32).at[token_A].add(
      ys_AxD.astype(jnp.float32) * weight_A[:, None])
  return out.astype(x_NxD.dtype)


def capacity(n_tokens: int, top_k: int, n_experts: int, capacity_factor: float) -> int:
  return max(1, math.ceil(capacity_factor * n_tokens * top_k / n_experts))


class Slots(NamedTuple):
  """Where each of the A = N * k assignments sits in an (E, C + 1, D) buffer, in priority order:
  all tokens' 1st choices, then all 2nd choices, ... (k-major). Slot C is a spare for overflow."""

  expert_A: jax.Array
  token_A: jax.Array
  weight_A: jax.Array
  slot_A: jax.Array  # in [0, C]; C for dropped assignments
  kept_A: jax.Array  # bool


def assign_slots(r: Routing, n_experts: int, c: int) -> Slots:
  """First choices claim slots before second choices, in token order; past C they drop."""
  n, k = r.expert_NxK.shape
  expert_A = r.expert_NxK.T.reshape(-1)
  onehot_AxE = jax.nn.one_hot(expert_A, n_experts, dtype=jnp.int32)
  slot_A = jnp.sum((jnp.cumsum(onehot_AxE, axis=0) - 1) * onehot_AxE, axis=-1)
  kept_A = slot_A < c
  return Slots(expert_A, jnp.tile(jnp.arange(n), k), r.weight_NxK.T.reshape(-1),
               jnp.where(kept_A, slot_A, c), kept_A)


def expert_swiglu(buf_ExCxD, w_gate_ExDxF, w_up_ExDxF, w_down_ExFxD) -> jax.Array:
  """Each expert's SwiGLU on its own C rows."""
  h = jnp.einsum("ecd,edf->ecf", buf_ExCxD, w_gate_ExDxF)
  u = jnp.einsum("ecd,edf->ecf", buf_ExCxD, w_up_ExDxF)
  return jnp.einsum("ecf,efd->ecd", jax.nn.silu(h) * u, w_down_ExFxD)


def _slotted_moe(x_NxD, r: Routing, c: int, experts: Callable[[jax.Array], jax.Array]):
  """(output, drop fraction): tokens into an (E, C + 1, D) buffer, experts(buffer) -> results in
  the same layout, results weighted back onto their tokens."""
  n, d = x_NxD.shape
  n_experts = r.probs_NxE.shape[-1]
  s = assign_slots(r, n_experts, c)
  buf_ExCxD = jnp.zeros((n_experts, c + 1, d), x_NxD.dtype).at[s.expert_A, s.slot_A].set(
      x_NxD[s.token_A])
  y_ExCxD = experts(buf_ExCxD)
  y_AxD = y_ExCxD[s.expert_A, s.slot_A].astype(jnp.float32) * (s.weight_A * s.kept_A)[:, None]
  out = jnp.zeros((n, d), jnp.float32).at[s.token_A].add(y_AxD)
  drop = 1.0 - jnp.mean(s.kept_A.astype(jnp.float32))
  return out.astype(x_NxD.dtype), drop


def capacity_moe(x_NxD, r: Routing, w_gate_ExDxF, w_up_ExDxF, w_down_ExFxD, capacity_factor: float):
  """(output, drop fraction). First choices claim slots before second choices, in token order."""
  n, k = r.expert_NxK.shape
  c = capacity(n, k, w_gate_ExDxF.shape[0], capacity_factor)
  return _slotted_moe(
      x_NxD, r, c, lambda buf: expert_swiglu(buf, w_gate_ExDxF, w_up_ExDxF, w_down_ExFxD))


def exchanged_moe(x_NxD, r: Routing, w_gate_GxDxF, w_up_GxDxF, w_down_GxFxD, c: int,
                  exchange: ExpertExchange):
  """(output, drop fraction) of this device's N tokens, its experts' weights local (G = E / S of
  them): the (E, C + 1, D) buffer travels to the experts' devices by all-to-all and back."""
  s = exchange.n_shards

  def remote_experts(buf_ExCxD):
    e, c1, d = buf_ExCxD.shape
    g = e // s
    # After the exchange, block s holds device s's rows for this device's G experts.
    recv_SxGxCxD = exchange.all_to_all(buf_ExCxD).reshape(s, g, c1, d)
    recv_GxSCxD = recv_SxGxCxD.transpose(1, 0, 2, 3).reshape(g, s * c1, d)
    y_GxSCxD = expert_swiglu(recv_GxSCxD, w_gate_GxDxF, w_up_GxDxF, w_down_GxFxD)
    y_ExCxD = y_GxSCxD.reshape(g, s, c1, d).transpose(1, 0, 2, 3).reshape(e, c1, d)
    return exchange.all_to_all(y_ExCxD)

  return _slotted_moe(x_NxD, r, c, remote_experts)


def router_stats(r: Routing, drop: jax.Array, mean=lambda x: x) -> MoEStats:
  """The layer's statistics over all tokens; `mean` averages per-device means over devices."""
  n_experts = r.probs_NxE.shape[-1]
  f_E = mean(expert_share(r.expert_NxK, n_experts))
  p_E = mean(jnp.mean(r.probs_NxE, axis=0))
  return MoEStats(n_experts * jnp.sum(f_E * p_E), mean(z_loss(r)), mean(drop), f_E)


def moe_ffn(x_NxD, w_router_DxE, w_gate_ExDxF, w_up_ExDxF, w_down_ExFxD, cfg: MoEConfig,
            exchange: ExpertExchange | None = None):
  """The whole layer: route, dispatch, combine. Returns (output N x D, MoEStats).

  With an exchange of S > 1 shards, the expert weights are this device's E / S experts and x its
  own tokens (see the module docstring); without one, all E experts are here. With any exchange
  the statistics are means over every device's tokens.
  """
  r = route(x_NxD, w_router_DxE, cfg.top_k)
  n = x_NxD.shape[0]
  mean = (lambda x: x) if exchange is None else exchange.token_mean
  if exchange is not None and exchange.n_shards > 1:
    c = n if cfg.dispatch == "dropless" else capacity(n, cfg.top_k, cfg.n_experts, cfg.capacity_factor)
    out, drop = exchanged_moe(x_NxD, r, w_gate_ExDxF, w_up_ExDxF, w_down_ExFxD, c, exchange)
  elif cfg.dispatch == "dropless":
    out, drop = dropless_moe(x_NxD, r, w_gate_ExDxF, w_up_ExDxF, w_down_ExFxD), jnp.zeros(())
  else:
    out, drop = capacity_moe(x_NxD, r, w_gate_ExDxF, w_up_ExDxF, w_down_ExFxD, cfg.capacity_factor)
  return out, router_stats(r, drop, mean)
