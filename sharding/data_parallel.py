"""Data parallelism with explicit collectives, layer by layer: ZeRO stages inside the train step.

Each data-parallel device differentiates its share of the batch. What it holds of the parameters,
what it differentiates with respect to, and when the devices' gradients are summed is the ZeRO
stage (sharding/zero.py holds the layouts):

  stage  device holds      each layer, where the model uses it      gradient leaves the step
  0, 1   whole parameters  the whole parameters                     whole: all-reduced once (psum)
  2      whole parameters  the whole parameters, with a gradient    this device's slice: reduce-
                           tap whose backward reduce-scatters       scattered per layer, inside
                           (psum_scatter) the layer's gradient      the backward loop
  3      its slices        the layer's slices all-gathered just     this device's slice: the
                           before use, dropped after, re-gathered   gather's transpose is the
                           in the backward pass                     reduce-scatter, per layer

Expert weights are the exception to "gathered where used": with an `expert` mesh axis each device
keeps its own experts (gathered only over the other data-parallel axes, at stage 3) and the MoE
layer sends tokens to them by all-to-all (model/moe.py, ExpertExchange, which this module builds
and hands to the model as hook.expert_exchange). Their gradient then sums over the devices that
share those experts: the all-to-all's transpose brings back the cotangents of every expert-axis
peer's tokens, and the sum over the other axes is the transpose of the weights' replication there
(stages 0-2) or of their gather (stage 3, a reduce-scatter).

So at stages 2 and 3 no device ever holds a whole gradient (only one layer's, for a moment), and
gradient accumulation carries slices; at stage 3 no device holds whole parameters either, only
one layer's. The model stays mesh-agnostic: it calls hook.read(path, stored) where it reads
each group of parameters (model/param_hook.py, ParamHook), and this module builds the hook.

The collectives are written by hand in a shard_map over the data-parallel mesh axes: under plain
jit, whether a sum of which each device needs only a slice becomes a reduce-scatter depends on the
backend (the CPU compiler all-reduces the whole gradient and then slices it). Tensor parallelism
inside stays XLA's to partition (those axes are not manual here).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, PartitionSpec

from model.moe import ExpertExchange
from model.param_hook import AS_STORED, ParamHook
from sharding.mesh import BATCH_AXES
from sharding.rules import logical_axes

EXPERT_AXIS = "expert"

_is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731


def _entry_axes(entry) -> tuple[str, ...]:
  return (entry,) if isinstance(entry, str) else tuple(entry or ())


def manual_spec(spec: PartitionSpec, manual_axes: tuple[str, ...]) -> PartitionSpec:
  """`spec` with every mesh axis that is not manual dropped: what shard_map sees of the array."""
  out = []
  for entry in spec:
    axes = tuple(a for a in _entry_axes(entry) if a in manual_axes)
    out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*out)


def splits_of(spec: PartitionSpec) -> list[tuple[int, tuple[str, ...]]]:
  """[(dimension, mesh axes)] along which a manual spec is split; [] for a whole array."""
  return [(dim, _entry_axes(entry)) for dim, entry in enumerate(spec) if entry is not None]


def data_parallel_axes(mesh: Mesh) -> tuple[str, ...]:
  return tuple(a for a in BATCH_AXES if mesh.shape[a] > 1)


# --- What one device's gradient function sees ------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ParamView:
  """How the gradient function of one device reads the parameters.

  It differentiates with respect to `diff` (a tree like the params: whole parameters, slices,
  or gradient taps), builds what the model is given with assemble(diff), and passes `hook` to
  the model (AS_STORED: the model reads what it is given as it is).
  """

  assemble: Callable[[Any], Any] = lambda diff: diff
  hook: ParamHook = AS_STORED


WHOLE = ParamView()  # one device, or no data parallelism: the parameters as they are

# (params to differentiate, batch, view) -> (objective sum, token count, gradient sum like the
# differentiated params, metric sums). train/step.py builds it; data_parallel wraps it.
GradFn = Callable[[Any, Any, ParamView], tuple[jax.Array, jax.Array, Any, dict]]


class GradTap(NamedTuple):
  """A ZeRO-2 parameter as the model is given it: the whole parameter, and a slice-shaped tap.

  The model computes with `whole`; the gradient arrives at `tap`, reduce-scattered. The tap's
  value is never read (zeros): only its shape matters, the shape of this device's gradient slice.
  """

  tap: jax.Array
  whole: jax.Array


def _layer_spec(spec: PartitionSpec, ndim: int) -> PartitionSpec:
  """The spec of one layer of a stacked parameter (inside the scan over layers, the leading
  `layers` axis is gone)."""
  entries = tuple(spec) + (None,) * (ndim - len(spec))
  return PartitionSpec(*entries[-ndim:]) if len(entries) > ndim else PartitionSpec(*entries)


def _subtree(tree: Any, path: tuple) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _gather(x: jax.Array, splits) -> jax.Array:
  """The whole array from this device's slice (all-gathered along every split dimension). Its
  transpose, which autodiff derives, reduce-scatters a gradient into this device's slice."""
  for dim, axes in splits:
    x = jax.lax.all_gather(x, axes, axis=dim, tiled=True)
  return x


def _grad_tap(dp: tuple[str, ...], splits):
  """tap(t, whole) -> whole, whose backward reduce-scatters the gradient into t's place.

  Written as a custom JVP whose tangent is the all-gather of t's tangent: the tangent map is
  linear, so the backward pass runs its transpose, the reduce-scatter, while the forward pass
  runs no collective at all. (A custom VJP would do the same, but its output is always saved for
  the backward pass: every layer's whole parameters would then be held at once.) The sum over
  data-parallel axes that t is not split over comes from the cast of the tangent to varying,
  whose transpose is a sum.
  """
  split_axes = {a for _, axes in splits for a in axes}
  rest = tuple(a for a in dp if a not in split_axes)

  @jax.custom_jvp
  def tap(t, whole):
    del t
    return jax.lax.pcast(whole, dp, to="varying")

  @tap.defjvp
  def tap_jvp(primals, tangents):
    t, whole = primals
    dt, _ = tangents  # `whole` is held, not differentiated: its tangent is zero
    out = _gather(dt, splits)
    if rest:
      out = jax.lax.pcast(out, rest, to="varying")
    return tap(t, whole), out

  return tap


def _expert_dims(param_sharding: Any) -> Any:
  """A tree like the params: the dimension of each that holds its experts (logical axis
  `expert`), counted from the end so that it holds for one layer of a stack too (-3 for
  (layers, expert, embed, mlp)); 0 where there is none."""
  def dim(v):
    if not isinstance(v, nnx.Variable):
      return 0
    axes = logical_axes(v)
    return v.replace(axes.index("expert") - len(axes) if "expert" in axes else 0)

  return jax.tree.map(dim, param_sharding, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _expert_exchange(mesh: Mesh, dp: tuple[str, ...]) -> ExpertExchange:
  """The MoE layer's view of the mesh: all-to-all over the expert axis, means over all of dp."""
  return ExpertExchange(
      n_shards=mesh.shape[EXPERT_AXIS],
      all_to_all=lambda x: jax.lax.all_to_all(x, EXPERT_AXIS, 0, 0, tiled=True),
      # Every device holds as many tokens (the batch splits evenly), so the mean of the
      # per-device means is the mean over all tokens.
      token_mean=lambda x: jax.lax.pmean(x, dp))


def _recomputed(prim, params) -> bool:
  """The primitives whose outputs are used parameters: the model's backward pass derives them
  again (a re-gather of slices, a cast for a tap) rather than saving every layer's."""
  if prim.name == "all_gather":
    return True
  if prim.name == "custom_jvp_call":  # a gradient tap: a custom JVP around one cast
    return all(e.primitive.name == "pvary" for e in params["call_jaxpr"].jaxpr.eqns)
  return False


def _layerwise_hook(param_specs: Any, grad_specs: Any, dp: tuple[str, ...],
                    expert_dims: Any = None,
                    exchange: Optional[ExpertExchange] = None) -> ParamHook:
  """The model's parameter hook: gathers stored slices, and taps the gradient of whole parameters
  whose gradient is partitioned (ZeRO-2), one layer at a time where the model uses them. Expert
  weights are never gathered over their expert dimension: the exchange brings tokens to them."""

  def read_leaf(x, pspec, gspec, edim=0):
    if isinstance(x, GradTap):
      return _grad_tap(dp, splits_of(_layer_spec(gspec, x.whole.ndim)))(x.tap, x.whole)
    splits = splits_of(_layer_spec(pspec, x.ndim))  # no split: x as it is
    return _gather(x, [(d, axes) for d, axes in splits if not edim or d != x.ndim + edim])

  def read(path, stored):
    psub, gsub = _subtree(param_specs, path), _subtree(grad_specs, path)
    esub = _subtree(expert_dims, path) if expert_dims is not None else jax.tree.map(
        lambda _: 0, psub, is_leaf=_is_spec)
    if isinstance(stored, nnx.State):
      return jax.tree.map(read_leaf, stored, psub, gsub, esub,
                          is_leaf=lambda x: isinstance(x, GradTap))
    first = lambda sub: jax.tree.leaves(sub, is_leaf=_is_spec)[0]  # noqa: E731
    return read_leaf(stored, first(psub), first(gsub), first(esub))

  return ParamHook(read=read, recompute=_recomputed, expert_exchange=exchange)


def _is_layerwise(pspec: PartitionSpec, gspec: PartitionSpec) -> bool:
  """Whether a parameter is gathered or tapped where used (stored split, or gradient split)."""
  return bool(splits_of(pspec) or splits_of(gspec))


def _param_hook(mesh: Mesh, dp: tuple[str, ...], param_sharding: Any, param_specs: Any,
                grad_specs: Any) -> ParamHook:
  """The hook each device's model reads its parameters through: layerwise where any parameter
  is stored or differentiated in slices, or where the model has experts; else AS_STORED."""
  any_layerwise = any(_is_layerwise(p, g) for p, g in zip(
      jax.tree.leaves(param_specs, is_leaf=_is_spec), jax.tree.leaves(grad_specs, is_leaf=_is_spec)))
  expert_dims = _expert_dims(param_sharding)
  # An MoE model always gets the exchange: its router statistics are means over all tokens
  # (token_mean), and with an expert axis its tokens travel to their experts.
  has_experts = any(jax.tree.leaves(expert_dims))
  if not (any_layerwise or has_experts):
    return AS_STORED
  return _layerwise_hook(param_specs, grad_specs, dp, expert_dims,
                         _expert_exchange(mesh, dp) if has_experts else None)


def _differentiated(x: jax.Array, pspec: PartitionSpec, gspec: PartitionSpec, mesh: Mesh,
                    dp: tuple[str, ...]) -> jax.Array:
  """What this device differentiates with respect to, for one parameter."""
  if splits_of(pspec):
    return x  # this device's slice
  if not splits_of(gspec):
    # The whole parameter, typed as varying over the data-parallel axes: its gradient is then
    # this device's own, which _finished sums. (A parameter typed invariant would get a gradient
    # that shard_map had already summed, and summing it again would scale it by N.)
    return jax.lax.pcast(x, dp, to="varying")
  shape = list(x.shape)  # a zero tap, the shape of this device's gradient slice
  for dim, axes in splits_of(gspec):
    shape[dim] //= math.prod(mesh.shape[a] for a in axes)
  axes = tuple(a for _, ax in splits_of(gspec) for a in ax)
  return jax.lax.pcast(jnp.zeros(shape, x.dtype), axes, to="varying")


def _finished(g: jax.Array, pspec: PartitionSpec, gspec: PartitionSpec, mesh: Mesh,
              dp: tuple[str, ...]) -> jax.Array:
  """The gradient in its layout: summed if the backward pass has not summed it already."""
  if not _is_layerwise(pspec, gspec):
    return jax.lax.psum(g, dp)
  for dim, axes in splits_of(gspec):  # split further than stored: slice the finished sum
    if (dim, axes) not in splits_of(pspec) and splits_of(pspec):
      size = g.shape[dim] // math.prod(mesh.shape[a] for a in axes)
      g = jax.lax.dynamic_slice_in_dim(g, jax.lax.axis_index(axes) * size, size, dim)
  return g


def data_parallel(grad_fn: GradFn, mesh: Mesh, param_sharding: Any,
                  grad_sharding: Any) -> Callable[[Any, Any], tuple]:
  """(params, batch) -> grad_fn's results summed over the data-parallel devices.

  param_sharding: where the parameters are stored (NamedShardings like the params); grad_sharding:
  where the gradient sum must land. Per parameter, from the two layouts:
    stored split (stage 3; experts over the expert axis at any stage)  the device differentiates
        its slice; the model gathers it where used; the gradient comes back reduce-scattered.
        Over the expert axis nothing is gathered: the layer's tokens come to the experts
        (hook.expert_exchange), and the gradient of the device's experts is its own, summed over
        the other axes by the transpose of their replication
    stored whole, gradient split (stage 2)  a GradTap: the gradient comes back reduce-scattered
    both whole (stages 0, 1)  the whole parameter; its gradient is all-reduced after the backward
        pass (and after gradient accumulation: once per step)
  The batch's leading dimension is split over the data-parallel axes.
  """
  dp = data_parallel_axes(mesh)
  if not dp:
    return lambda params, batch: grad_fn(params, batch, WHOLE)  # nothing to sum
  specs = lambda tree: jax.tree.map(lambda s: manual_spec(s.spec, dp), tree)  # noqa: E731
  param_specs, grad_specs = specs(param_sharding), specs(grad_sharding)
  hook = _param_hook(mesh, dp, param_sharding, param_specs, grad_specs)

  def local(params, batch):
    diff = jax.tree.map(lambda x, p, g: _differentiated(x, p, g, mesh, dp), params, param_specs,
                        grad_specs, is_leaf=_is_spec)

    def assemble(d):
      """The model's parameters: GradTaps where a whole parameter has a partitioned gradient."""
      return jax.tree.map(lambda t, w: GradTap(t, w) if t.shape != w.shape else t, d, params)

    objective, n, grads, sums = grad_fn(diff, batch, ParamView(assemble, hook))
    grads = jax.tree.map(lambda g, p, gs: _finished(g, p, gs, mesh, dp), grads, param_specs,
                         grad_specs, is_leaf=_is_spec)
    return (jax.lax.psum(objective, dp), jax.lax.psum(n, dp), grads,
            jax.tree.map(lambda x: jax.lax.psum(x, dp), sums))

  return jax.shard_map(
      local, mesh=mesh, axis_names=set(dp),
      in_specs=(param_specs, PartitionSpec(dp)),
      out_specs=(PartitionSpec(), PartitionSpec(), grad_specs, PartitionSpec()))
