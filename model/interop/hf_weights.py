"""Tensor names and layouts: Hugging Face Llama / Mixtral / Qwen3 state dict <-> llmlab parameters.

A torch Linear stores its weight as (out, in) and computes x @ W^T; llmlab stores (in..., out...)
with the heads split out, e.g. wq (D, H, Dh) and wo (H, Dh, D). Every matrix therefore converts as
"transpose, then reshape": W_hf (H*Dh, D) -> W_hf^T (D, H*Dh) -> (D, H, Dh), and back as the
reverse. Norm scales and the embedding table have the same layout on both sides.

Rotary embedding convention: llmlab's rope() uses the half-split layout (dimension i of a head
rotates with dimension i + Dh/2), which is exactly transformers' rotate_half in LlamaAttention.
So q_proj and k_proj convert with the plain reshape above in both directions; no permutation of
their rows is needed. (The interleaved-to-half-split permutation people know from Meta's original
Llama release is applied once by transformers' own importer, before a checkpoint reaches the
Hub format that is read here.) tests/test_interop.py checks this through matching logits, and
checks that interleaving the rows would break them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model import transformer
from model.config import ModelConfig
from model.interop.hf_config import InteropError


@dataclasses.dataclass(frozen=True)
class Spec:
  """One llmlab parameter and the Hugging Face tensor it comes from.

  path: the parameter inside the model (top level) or inside a block (per layer).
  hf: the tensor name; per layer it follows "model.layers.{i}." and {e} numbers an expert.
  n_in: how many leading llmlab axes form the torch Linear's input axis (None: same layout).
  """

  path: tuple[str, ...]
  hf: str
  n_in: Optional[int]


TOP = (
    Spec(("embed",), "model.embed_tokens.weight", None),
    Spec(("final_norm", "scale"), "model.norm.weight", None),
)
LM_HEAD = Spec(("lm_head",), "lm_head.weight", 1)  # (V, D) -> (D, V), untied models only
ATTENTION = (
    Spec(("attn_norm", "scale"), "input_layernorm.weight", None),
    Spec(("attn", "wq"), "self_attn.q_proj.weight", 1),
    Spec(("attn", "wk"), "self_attn.k_proj.weight", 1),
    Spec(("attn", "wv"), "self_attn.v_proj.weight", 1),
    Spec(("attn", "wo"), "self_attn.o_proj.weight", 2),
    Spec(("mlp_norm", "scale"), "post_attention_layernorm.weight", None),
)
QK_NORM = (  # Qwen3: one RMSNorm scale over head_dim for the queries, one for the keys
    Spec(("attn", "q_norm", "scale"), "self_attn.q_norm.weight", None),
    Spec(("attn", "k_norm", "scale"), "self_attn.k_norm.weight", None),
)
DENSE_MLP = (
    Spec(("mlp", "w_gate"), "mlp.gate_proj.weight", 1),
    Spec(("mlp", "w_up"), "mlp.up_proj.weight", 1),
    Spec(("mlp", "w_down"), "mlp.down_proj.weight", 1),
)
# Mixtral: llmlab's router is (D, E); each expert's matrices are stacked on a leading E axis.
# w1 is the gate, w3 the up projection, w2 the down projection.
MOE_ROUTER = Spec(("mlp", "router"), "block_sparse_moe.gate.weight", 1)
MOE_EXPERTS = (
    Spec(("mlp", "w_gate"), "block_sparse_moe.experts.{e}.w1.weight", 1),
    Spec(("mlp", "w_up"), "block_sparse_moe.experts.{e}.w3.weight", 1),
    Spec(("mlp", "w_down"), "block_sparse_moe.experts.{e}.w2.weight", 1),
)
# Tensors some checkpoints carry that are recomputed from the config, not learned.
DERIVED_SUFFIXES = ("rotary_emb.inv_freq",)


class TensorSource(Protocol):
  def names(self) -> set[str]: ...

  def get(self, name: str) -> np.ndarray: ...


def hf_shape(shape: tuple[int, ...], n_in: Optional[int]) -> tuple[int, ...]:
  if n_in is None:
    return tuple(shape)
  return (math.prod(shape[n_in:]), math.prod(shape[:n_in]))


def to_llmlab_layout(w_hf: np.ndarray, shape: tuple[int, ...], n_in: Optional[int]) -> np.ndarray:
  return w_hf.reshape(shape) if n_in is None else w_hf.T.reshape(shape)


def to_hf_layout(w: np.ndarray, n_in: Optional[int]) -> np.ndarray:
  if n_in is None:
    return np.ascontiguousarray(w)
  return np.ascontiguousarray(w.reshape(math.prod(w.shape[:n_in]), -1).T)


def _get(tree: dict, path: tuple) -> Any:
  for p in path:
    tree = tree[p]
  return tree


def _set(tree: dict, path: tuple, value: Any) -> None:
  for p in path[:-1]:
    tree = tree[p]
  tree[path[-1]] = value


def _layer_prefix(i: int) -> str:
  return f"model.layers.{i}."


def _block_specs(cfg: ModelConfig) -> tuple[Spec, ...]:
  attention = ATTENTION + (QK_NORM if cfg.qk_norm else ())
  if not cfg.moe.enabled:
    return attention + DENSE_MLP
  if cfg.moe.every != 1:
    raise InteropError(
        f"model.moe.every={cfg.moe.every} has no Mixtral equivalent: Mixtral makes every layer MoE")
  return attention + (MOE_ROUTER,) + MOE_EXPERTS


def _layer_paths(cfg: ModelConfig, i: int, spec: Spec) -> tuple:
  """Where layer i's copy of spec lives: a slice of a stacked leaf, or its own block's leaf."""
  return ("blocks", *spec.path) if cfg.scan_layers else ("blocks", i, *spec.path)


def import_params(source: TensorSource, cfg: ModelConfig) -> nnx.State:
  """llmlab parameters (in cfg.param_dtype) from a Hugging Face state dict.

  Raises InteropError naming the tensor when one is missing, has the wrong shape, or has no
  place in the model.
  """
  _, abstract = transformer.abstract(cfg)
  pure = nnx.to_pure_dict(abstract)
  available, used = source.names(), set()
  dtype = cfg.weight_dtype

  def take(name: str, shape: tuple[int, ...], n_in: Optional[int]) -> np.ndarray:
    if name not in available:
      raise InteropError(f"checkpoint has no tensor {name!r}, which config.json implies")
    w = source.get(name)
    if tuple(w.shape) != hf_shape(shape, n_in):
      raise InteropError(
          f"tensor {name!r} has shape {tuple(w.shape)}, expected {hf_shape(shape, n_in)} "
          "from config.json")
    used.add(name)
    return to_llmlab_layout(np.asarray(w), shape, n_in).astype(dtype)

  specs = TOP + (() if cfg.tie_embeddings else (LM_HEAD,))
  for spec in specs:
    _set(pure, spec.path, take(spec.hf, _get(pure, spec.path).shape, spec.n_in))
  for spec in _block_specs(cfg):
    per_layer = []
    for i in range(cfg.n_layers):
      shape = _get(pure, _layer_paths(cfg, i, spec)).shape
      shape = shape[1:] if cfg.scan_layers else shape
      name = _layer_prefix(i) + spec.hf
      if "{e}" in spec.hf:  # stack the experts' matrices on a leading E axis
        w = np.stack([take(name.format(e=e), shape[1:], spec.n_in) for e in range(shape[0])])
      else:
        w = take(name, shape, spec.n_in)
      per_layer.append(w)
      if not cfg.scan_layers:
        _set(pure, _layer_paths(cfg, i, spec), w)
    if cfg.scan_layers:
      _set(pure, _layer_paths(cfg, 0, spec), np.stack(per_layer))

  ignorable = {LM_HEAD.hf} if cfg.tie_embeddings else set()  # transformers ties it anyway
  extra = sorted(n for n in available - used - ignorable if not n.endswith(DERIVED_SUFFIXES))
  if extra:
    more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
    raise InteropError(f"checkpoint tensor {extra[0]!r}{more} has no place in this model "
                       "(an option config.json does not declare?)")
  nnx.replace_by_pure_dict(abstract, jax.tree.map(jnp.asarray, pure))
  return abstract


def export_params(params: nnx.State, cfg: ModelConfig) -> dict[str, np.ndarray]:
  """The Hugging Face state dict of llmlab parameters, in their own dtype, in layer order."""
  pure = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), nnx.to_pure_dict(params))
  out = {TOP[0].hf: to_hf_layout(_get(pure, TOP[0].path), None)}
  for i in range(cfg.n_layers):
    for spec in _block_specs(cfg):
      w = _get(pure, _layer_paths(cfg, i, spec))
      w = w[i] if cfg.scan_layers else w
      name = _layer_prefix(i) + spec.hf
      if "{e}" in spec.hf:
        out.update({name.format(e=e): to_hf_layout(w[e], spec.n_in) for e in range(w.shape[0])})
      else:
        out[name] = to_hf_layout(w, spec.n_in)
  out[TOP[1].hf] = to_hf_layout(_get(pure, TOP[1].path), None)
  if not cfg.tie_embeddings:
    out[LM_HEAD.hf] = to_hf_layout(_get(pure, LM_HEAD.path), LM_HEAD.n_in)
  return out
