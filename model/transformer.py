"""The decoder-only Transformer: embed, n_layers pre-norm blocks, final norm, LM head."""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from model.config import ModelConfig
from model.kv_cache import KVCache
from model.layers import Block
from model.param_hook import AS_STORED, ParamHook
from model.primitives import RMSNorm, make_param, softcap

_REMAT = {
    "full": None,  # save nothing inside a layer, recompute it all in the backward pass
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

# Everything the hook reads is named USED_PARAM, so that the rematerialisation policy can leave
# it out of what the backward pass saves (model/param_hook.py says why).
USED_PARAM = "used_param"


def _save_all_but_used(hook: ParamHook):
  """Remat policy: save every intermediate except the parameters hook.read delivered and the
  primitives they come out of (a gather's output is the used parameter under another name);
  these are derived again from the stored parameters. hook.recompute names those primitives: the
  model does not know what hook.read does."""

  def policy(prim, *_, **params) -> bool:
    if prim.name == "name":
      return params.get("name") != USED_PARAM
    return not hook.recompute(prim, params)

  return policy


def _marked(hook: ParamHook) -> ParamHook:
  """The hook whose reads carry the USED_PARAM name (the rest unchanged)."""
  def read(path, stored):
    return jax.tree.map(lambda x: checkpoint_name(x, USED_PARAM), hook.read(path, stored))
  return dataclasses.replace(hook, read=read)


class Transformer(nnx.Module):
  """Token ids (B, T) -> next-token logits (B, T, V) in float32."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = make_param(
        rngs.params(), (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), std=cfg.init_std,
        dtype=cfg.weight_dtype, weight_decay=False, mup_kind="embedding", width_mult=cfg.width_mult)
    if cfg.scan_layers:  # one stacked block: all layers dense, or all MoE (config validates)
      self.blocks = Block(cfg, rngs, n_stack=cfg.n_layers, moe=cfg.moe.enabled)
    else:
      self.blocks = nnx.List(
          [Block(cfg, rngs, moe=cfg.is_moe_layer(i), layer=i) for i in range(cfg.n_layers)])
    self.final_norm = RMSNorm(cfg)
    if not cfg.tie_embeddings:
      self.lm_head = make_param(
          rngs.params(), (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), std=cfg.init_std,
          dtype=cfg.weight_dtype, mup_kind="readout", width_mult=cfg.width_mult)

  def embed_tokens(self, tokens_BxT: jax.Array, hook: ParamHook = AS_STORED) -> jax.Array:
    embed_VxD = hook.read(("embed",), self.embed.get_value())
    return jnp.take(embed_VxD, tokens_BxT, axis=0).astype(self.cfg.compute_dtype)

  def logits(self, x_BxTxD: jax.Array, hook: ParamHook = AS_STORED) -> jax.Array:
    norm = self.final_norm
    if not hook.reads_as_stored:
      norm_def, norm_state = nnx.split(norm)
      norm = nnx.merge(norm_def, hook.read(("final_norm",), norm_state))
    x = norm(x_BxTxD)
    dt = self.cfg.compute_dtype
    if self.cfg.tie_embeddings:
      w = hook.read(("embed",), self.embed.get_value())
      out = jnp.einsum("btd,vd->btv", x.astype(dt), w.astype(dt), preferred_element_type=jnp.float32)
    else:
      w = hook.read(("lm_head",), self.lm_head.get_value())
      out = jnp.einsum("btd,dv->btv", x.astype(dt), w.astype(dt), preferred_element_type=jnp.float32)
    out = out.astype(jnp.float32)
    if self.cfg.output_mult != 1.0:  # muP's readout multiplier 1/m (the tied table's input use
      out = out * self.cfg.output_mult  # in embed_tokens stays unscaled)
    return softcap(out, self.cfg.final_logit_softcap)

  def _layer_fn(self, blocks, path: tuple = ("blocks",), hook: ParamHook = AS_STORED):
    """(stored state, body) with body(x, stored layer state, positions, segs) -> (x, MoEStats
    or None). The body turns the stored layer state into the arrays it computes with
    (hook.read(path, ...)); the backward pass derives those again instead of saving them."""
    graphdef, state = nnx.split(blocks)

    def body(x_BxTxD, layer_state, positions_BxT, segment_ids_BxT):
      return nnx.merge(graphdef, hook.read(path, layer_state)).forward(
          x_BxTxD, positions_BxT, segment_ids_BxT, hook.expert_exchange)

    if self.cfg.remat != "none":
      body = jax.checkpoint(body, policy=_REMAT[self.cfg.remat])
    elif not hook.reads_as_stored:  # save everything the layer computes except what was read
      body = jax.checkpoint(body, policy=_save_all_but_used(hook))
    return state, body

  def forward_with_aux(
      self,
      tokens_BxT: jax.Array,
      positions_BxT: Optional[jax.Array] = None,
      segment_ids_BxT: Optional[jax.Array] = None,
      hook: ParamHook = AS_STORED,
  ):
    """(logits BxTxV float32, MoEStats stacked over the MoE layers, or None for a dense model).

    hook: how each group of parameters is read where it is used (model/param_hook.py).
    """
    b, t = tokens_BxT.shape
    if positions_BxT is None:
      positions_BxT = jnp.broadcast_to(jnp.arange(t)[None], (b, t))
    if not hook.reads_as_stored:
      hook = _marked(hook)
    x_BxTxD = self.embed_tokens(tokens_BxT, hook)
    if self.cfg.scan_layers:
      state, body = self._layer_fn(self.blocks, ("blocks",), hook)

      def scan_body(x, layer_state):
        return body(x, layer_state, positions_BxT, segment_ids_BxT)

      x_BxTxD, stats = jax.lax.scan(scan_body, x_BxTxD, state)
    else:
      per_layer = []
      for i, block in enumerate(self.blocks):
        state, body = self._layer_fn(block, ("blocks", i), hook)
        x_BxTxD, layer_stats = body(x_BxTxD, state, positions_BxT, segment_ids_BxT)
        if layer_stats is not None:
          per_layer.append(layer_stats)
      stats = jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer) if per_layer else None
    return self.logits(x_BxTxD, hook), stats

  def __call__(
      self,
      tokens_BxT: jax.Array,
      positions_BxT: Optional[jax.Array] = None,
      segment_ids_BxT: Optional[jax.Array] = None,
  ) -> jax.Array:
    return self.forward_with_aux(tokens_BxT, positions_BxT, segment_ids_BxT)[0]

  def decode(
      self, tokens_BxT: jax.Array, positions_BxT: jax.Array, cache: KVCache,
  ) -> tuple[jax.Array, KVCache]:
    """Forward over T new tokens at positions_BxT against the cache: (logits BxTxV, cache).

    Prefill (T = the padded prompt length) and a decode step (T = 1, or gamma + 1 for a
    speculative verification) are this one function. With scan_layers the layers are one
    lax.scan whose xs are (layer params, layer keys, layer values) and whose ys are the updated
    keys and values, so the cache stays stacked per layer like the parameters. Without it each
    layer has its own cache buffers (see unstack_layers for why decoding prefers that).
    """
    x_BxTxD = self.embed_tokens(tokens_BxT)
    if self.cfg.scan_layers:
      graphdef, state = nnx.split(self.blocks)

      def scan_body(x, xs):
        layer_state, k_BKxDhxS, v_BKxSxDh = xs
        x, k_BKxDhxS, v_BKxSxDh = nnx.merge(graphdef, layer_state).decode(
            x, positions_BxT, k_BKxDhxS, v_BKxSxDh)
        return x, (k_BKxDhxS, v_BKxSxDh)

      x_BxTxD, (k, v) = jax.lax.scan(
          scan_body, x_BxTxD, (state, cache.k_LxBKxDhxS, cache.v_LxBKxSxDh))
    else:
      # One buffer per layer (kv_cache.init), like the weights: no slicing, no restacking.
      k, v = [], []
      for block, k_i, v_i in zip(self.blocks, cache.k_LxBKxDhxS, cache.v_LxBKxSxDh):
        x_BxTxD, k_i, v_i = block.decode(x_BxTxD, positions_BxT, k_i, v_i)
        k.append(k_i)
        v.append(v_i)
      k, v = tuple(k), tuple(v)
    return self.logits(x_BxTxD), KVCache(k, v)


def create(cfg: ModelConfig, key: jax.Array) -> tuple[nnx.GraphDef, nnx.State]:
  """Builds the model from a PRNG key; returns (graphdef, params) for pure functions."""
  return nnx.split(Transformer(cfg, nnx.Rngs(params=key)))


def abstract(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
  """(graphdef, params as ShapeDtypeStructs) without allocating anything."""
  return jax.eval_shape(lambda: create(cfg, jax.random.key(0)))


def apply(graphdef: nnx.GraphDef, params: nnx.State, tokens_BxT: jax.Array,
          positions_BxT: Optional[jax.Array] = None,
          segment_ids_BxT: Optional[jax.Array] = None) -> jax.Array:
  """Pure forward pass: logits (B, T, V) from params (apply_with_aux without the statistics)."""
  return apply_with_aux(graphdef, params, tokens_BxT, positions_BxT, segment_ids_BxT)[0]


def decode(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    tokens_BxT: jax.Array,
    positions_BxT: jax.Array,
    cache: KVCache,
) -> tuple[jax.Array, KVCache]:
  """Pure cached forward pass: (logits BxTxV float32, updated cache). See Transformer.decode."""
  return nnx.merge(graphdef, params).decode(tokens_BxT, positions_BxT, cache)


def apply_with_aux(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    tokens_BxT: jax.Array,
    positions_BxT: Optional[jax.Array] = None,
    segment_ids_BxT: Optional[jax.Array] = None,
    hook: ParamHook = AS_STORED,
):
  """Pure forward pass: (logits, MoEStats stacked over MoE layers, or None when dense).

  params are stored parameters that hook.read turns into the arrays each layer computes with,
  where and when it computes (model/param_hook.py); AS_STORED computes with them as they are.
  """
  return nnx.merge(graphdef, params).forward_with_aux(
      tokens_BxT, positions_BxT, segment_ids_BxT, hook=hook)


def unstack_layers(
    cfg: ModelConfig, params: nnx.State,
) -> tuple[ModelConfig, nnx.GraphDef, nnx.State]:
  """The same weights in the layout of scan_layers=False: one buffer per layer.

  For decoding. A scanned layer reads its weights out of the stacked (L, ...) arrays with a
  dynamic slice, and XLA on CPU materialises each slice: every decode step then writes and reads
  the weights a second time. Separate buffers are read in place (docs/inference.md has the
  measured difference). Logits are unchanged (tests/test_generation.py).
  """
  if not cfg.scan_layers:
    return cfg, abstract(cfg)[0], params
  flat_cfg = dataclasses.replace(cfg, scan_layers=False)
  graphdef, state = abstract(flat_cfg)
  pure = nnx.to_pure_dict(params)
  stacked = pure.pop("blocks")
  pure["blocks"] = {i: jax.tree.map(lambda x: x[i], stacked) for i in range(cfg.n_layers)}
  nnx.replace_by_pure_dict(state, pure)
  return flat_cfg, graphdef, state
