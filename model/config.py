"""ModelConfig: the shape of a decoder-only Transformer, validated once at the edge.

Everything inside model/ trusts a ModelConfig; every impossible combination is rejected here with a
ValueError that names the field and the values it may take.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from model import fields
from model.moe import MoEConfig
from model.rope import RopeScaling

ATTENTION_IMPLS = ("reference", "flash", "cudnn", "pallas", "auto")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# Compute dtypes. "auto": bfloat16 on GPU and TPU (their matrix units' fast path), float32 on CPU
# (no bfloat16 matrix unit there: it would only lose precision). float16 is not offered: its
# 5-bit exponent underflows small gradients unless the loss is scaled, which llmlab does not do.
COMPUTE_DTYPES = ("auto", "float32", "bfloat16")
REMAT_POLICIES = ("none", "full", "dots")
PARAMETRIZATIONS = ("sp", "mup")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and numerics of the model.

  n_kv_heads selects the attention variant: n_kv_heads == n_heads is multi-head attention (MHA),
  n_kv_heads == 1 multi-query attention (MQA), anything in between grouped-query attention (GQA).
  """

  vocab_size: int = 1024
  d_model: int = 128
  n_layers: int = 4
  n_heads: int = 4
  n_kv_heads: int = 2
  d_ff: int = 384
  max_seq_len: int = 256
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling = RopeScaling()  # kind none | llama3 | yarn (model/rope.py)
  d_head: int = 0  # width of each head; 0 = d_model / n_heads (Qwen3 decouples the two)
  qk_norm: bool = False  # RMSNorm over each query and key head before RoPE (Qwen3, Gemma 3)
  # Sliding-window attention (Mistral): each token sees itself and the sliding_window - 1 tokens
  # before it; 0 = the whole causal prefix.
  sliding_window: int = 0
  # With a sliding window: every global_every-th layer attends to the whole prefix instead
  # (Gemma 2: 2, Gemma 3: 6, i.e. five local layers to one global); 0 = every layer local.
  global_every: int = 0
  # Multi-head latent attention (DeepSeek-V2, model/mla.py): keys and values from a latent of
  # kv_lora_rank dims per token, the only thing decoding caches, plus a decoupled RoPE key of
  # qk_rope_head_dim dims shared by the heads. 0 = ordinary attention (MHA / GQA / MQA).
  kv_lora_rank: int = 0
  qk_rope_head_dim: int = 0
  norm_eps: float = 1e-5
  tie_embeddings: bool = True
  attention_impl: str = "reference"
  # Mixed precision: matmuls and activations in `dtype`, while parameters (the optimizer's master
  # copy) and Adam's moments stay in param_dtype; norms, softmax and the loss are float32 always.
  # compute dtype: auto | float32 | bfloat16; auto = bfloat16 matmuls on GPU/TPU, float32 on CPU
  dtype: str = "auto"
  param_dtype: str = "float32"  # storage dtype of the parameters
  scan_layers: bool = True  # one compiled layer body, applied with lax.scan
  remat: str = "none"  # rematerialisation policy of each layer: none | full | dots
  init_std: float = 0.02
  moe: MoEConfig = MoEConfig()  # n_experts = 0: every layer is a dense SwiGLU
  # sp: standard parametrization (init_std everywhere, one learning rate, 1/sqrt(d_head) scores).
  # mup: maximal update parametrization (Yang et al. 2022) relative to a base model of d_model
  # base_width, m = d_model / base_width: hidden matrices init init_std / sqrt(m) and Adam lr / m,
  # logits * 1/m, scores * sqrt(base_head_dim) / d_head; at m = 1 exactly sp (docs/training.md).
  parametrization: str = "sp"
  base_width: int = 0  # mup: the base model's d_model; 0 = d_model (m = 1)
  # mup: the base model's head width; 0 = head_dim / m (n_heads fixed, the head widens with
  # d_model); set it to d_head when the heads are added instead and keep their width.
  base_head_dim: int = 0
  # Soft-caps (Gemma 2: 30 and 50): cap * tanh(x / cap) on the output logits and on the scaled
  # attention scores before the mask and softmax; 0 = off.
  final_logit_softcap: float = 0.0
  attn_logit_softcap: float = 0.0

  def __post_init__(self):
    if isinstance(self.moe, dict):  # from a config file or config.json
      object.__setattr__(self, "moe", MoEConfig.from_dict(self.moe))
    if isinstance(self.rope_scaling, dict):
      object.__setattr__(self, "rope_scaling", RopeScaling.from_dict(self.rope_scaling))
    positive = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len")
    for name in positive:
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
    for name in ("rope_theta", "norm_eps", "init_std"):
      if not getattr(self, name) > 0:
        raise ValueError(f"model.{name} must be positive, got {getattr(self, name)!r}")
    if not isinstance(self.d_head, int) or isinstance(self.d_head, bool) or self.d_head < 0:
      raise ValueError(f"model.d_head must be >= 0 (0 = d_model / n_heads), got {self.d_head!r}")
    if not self.d_head and self.d_model % self.n_heads:
      raise ValueError(
          f"model.d_model={self.d_model} must be divisible by model.n_heads={self.n_heads} "
          "(or set model.d_head)")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(
          f"model.n_heads={self.n_heads} must be divisible by model.n_kv_heads={self.n_kv_heads} "
          "(1 = MQA, n_heads = MHA, a divisor in between = GQA)")
    if self.head_dim % 2:
      raise ValueError(f"the head width {self.head_dim} (model.d_head, or model.d_model / "
                       "model.n_heads) must be even for RoPE")
    if not isinstance(self.sliding_window, int) or isinstance(self.sliding_window, bool) or self.sliding_window < 0:
      raise ValueError(
          f"model.sliding_window must be >= 0 (0 = off), got {self.sliding_window!r}")
    if not isinstance(self.global_every, int) or isinstance(self.global_every, bool) or self.global_every < 0:
      raise ValueError(f"model.global_every must be >= 0 (0 = off), got {self.global_every!r}")
    if self.global_every and not self.sliding_window:
      raise ValueError("model.global_every mixes local and global layers: set model.sliding_window")
    if self.global_every and self.scan_layers:
      # Scanned layers share one compiled body, so they cannot differ in their window.
      raise ValueError(
          f"model.global_every={self.global_every} mixes windowed and global layers: set "
          "model.scan_layers=False")
    for name in ("kv_lora_rank", "qk_rope_head_dim"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"model.{name} must be >= 0, got {value!r}")
    if self.kv_lora_rank:
      dr = self.qk_rope_head_dim
      if not (dr > 0 and dr % 2 == 0 and dr < self.head_dim):
        raise ValueError(
            f"model.qk_rope_head_dim={dr} must be even, positive and below the head width "
            f"{self.head_dim} with latent attention (model.kv_lora_rank={self.kv_lora_rank})")
      if self.n_kv_heads != self.n_heads:
        raise ValueError(
            f"latent attention has a key and value per head: set model.n_kv_heads="
            f"{self.n_heads} (= model.n_heads), not {self.n_kv_heads}")
      if self.qk_norm:
        raise ValueError("model.qk_norm with latent attention (model.kv_lora_rank) is not built")
    elif self.qk_rope_head_dim:
      raise ValueError("model.qk_rope_head_dim needs latent attention: set model.kv_lora_rank")
    if self.sliding_window and self.attention_impl in ("cudnn", "pallas"):
      raise ValueError(
          f"model.attention_impl={self.attention_impl} has no sliding window; use flash, "
          "reference or auto with model.sliding_window")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(
          f"model.attention_impl={self.attention_impl!r} is unknown; allowed: {', '.join(ATTENTION_IMPLS)}")
    if self.dtype == "float16":
      raise ValueError(
          "model.dtype=float16 needs loss scaling, which llmlab does not do; use "
          "model.dtype=bfloat16 (same memory and speed, float32's range) or auto")
    if self.dtype not in COMPUTE_DTYPES:
      raise ValueError(
          f"model.dtype={self.dtype!r} is unknown; allowed: {', '.join(COMPUTE_DTYPES)}")
    if self.param_dtype not in DTYPES:
      raise ValueError(
          f"model.param_dtype={self.param_dtype!r} is unknown; allowed: {', '.join(DTYPES)}")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(
          f"model.remat={self.remat!r} is unknown; allowed: {', '.join(REMAT_POLICIES)}")
    self._check_parametrization()
    self._check_softcaps()
    if self.moe.enabled and self.n_layers % self.moe.every:
      raise ValueError(
          f"model.n_layers={self.n_layers} must be divisible by model.moe.every={self.moe.every}")
    if self.moe.enabled and self.moe.every > 1 and self.scan_layers:
      # Scanned layers share one compiled body, so they cannot mix dense and MoE FFNs.
      raise ValueError(
          f"model.moe.every={self.moe.every} mixes dense and MoE layers: set "
          "model.scan_layers=False (or model.moe.every=1)")

  def _check_parametrization(self) -> None:
    if self.parametrization not in PARAMETRIZATIONS:
      raise ValueError(f"model.parametrization={self.parametrization!r} is unknown; allowed: "
                       f"{', '.join(PARAMETRIZATIONS)}")
    for name in ("base_width", "base_head_dim"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"model.{name} must be >= 0 (0 = this model's own), got {value!r}")
      if value and self.parametrization != "mup":
        raise ValueError(f"model.{name} is read only by muP: set model.parametrization=mup "
                         f"or model.{name}=0")
    if self.parametrization == "mup" and (self.moe.enabled or self.kv_lora_rank):
      # The router and the latent projections have no muP rule here (which widths scale?).
      raise ValueError("model.parametrization=mup is not built for MoE (model.moe.n_experts) "
                       "or latent attention (model.kv_lora_rank): use model.parametrization=sp")

  def _check_softcaps(self) -> None:
    for name in ("final_logit_softcap", "attn_logit_softcap"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"model.{name} must be >= 0 (0 = off; Gemma 2: 30 and 50), got {value!r}")
    if self.attn_logit_softcap and self.attention_impl in ("cudnn", "pallas"):
      raise ValueError(
          f"model.attention_impl={self.attention_impl} has no attention soft-cap; use flash, "
          "reference or auto with model.attn_logit_softcap")

  @property
  def width_mult(self) -> float:
    """muP's width multiplier m = d_model / base_width; 1.0 under sp."""
    if self.parametrization != "mup" or not self.base_width:
      return 1.0
    return self.d_model / self.base_width

  @property
  def hidden_init_std(self) -> float:
    """Init std of the hidden matrices: init_std, over sqrt(m) under muP (variance ~ 1/fan_in)."""
    m = self.width_mult
    return self.init_std if m == 1.0 else self.init_std / m ** 0.5

  @property
  def output_mult(self) -> float:
    """What the readout's logits are multiplied by: 1/m under muP, 1 under sp."""
    return 1.0 / self.width_mult

  @property
  def attn_scale(self) -> float:
    """The attention scores' scale: 1/sqrt(d_head) under sp; sqrt(base_head_dim) / d_head under
    muP (1/d_head, equal to sp's at the base width)."""
    dh = self.head_dim
    if self.parametrization != "mup":
      return dh ** -0.5
    base_dh = self.base_head_dim or dh / self.width_mult
    return (base_dh / dh) ** 0.5 * dh ** -0.5  # (1.0) * dh ** -0.5 exactly at the base width

  def for_eval(self) -> "ModelConfig":
    """The model as evaluation runs it: MoE layers dispatch by model.moe.eval_dispatch
    (MoEConfig.for_eval); the parameters are the same. Itself for a dense model."""
    moe = self.moe.for_eval()
    return self if moe == self.moe else dataclasses.replace(self, moe=moe)

  @property
  def d_expert(self) -> int:
    return self.moe.d_expert or self.d_ff

  def layer_window(self, layer: int) -> int:
    """Layer `layer`'s sliding window (0: it attends to the whole prefix)."""
    if self.global_every and (layer + 1) % self.global_every == 0:
      return 0
    return self.sliding_window

  def is_moe_layer(self, layer: int) -> bool:
    """Layers every-1, 2*every-1, ... are MoE layers (all of them with every = 1)."""
    return self.moe.enabled and (layer + 1) % self.moe.every == 0

  @property
  def n_moe_layers(self) -> int:
    return self.n_layers // self.moe.every if self.moe.enabled else 0

  @property
  def head_dim(self) -> int:
    return self.d_head or self.d_model // self.n_heads

  @property
  def compute_dtype(self) -> Any:
    """The dtype of matmuls and activations; "auto" is resolved on the default backend."""
    if self.dtype == "auto":
      return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    return DTYPES[self.dtype]

  @property
  def weight_dtype(self) -> Any:
    return DTYPES[self.param_dtype]

  @classmethod
  def from_dict(cls, d: dict) -> "ModelConfig":
    """Builds a config from a mapping (moe a nested one), rejecting keys that are not fields."""
    return fields.from_dict(cls, d, "model")

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)  # nested: moe becomes a dict


def count_params(cfg: ModelConfig) -> dict[str, int]:
  """Parameter counts from the config alone: total, without the embedding tables, and active
  per token (an MoE layer counts its router and top_k of its experts).

  Matches the parameters the model actually creates (a test checks the two agree).
  """
  d, f, dh = cfg.d_model, cfg.d_ff, cfg.head_dim
  attn = d * cfg.n_heads * dh * 2 + d * cfg.n_kv_heads * dh * 2  # wq, wo, wk, wv
  if cfg.kv_lora_rank:  # wq, wo; w_dkv, kv_norm, w_uk, w_uv, w_kr (model/mla.py)
    dc, dr, h = cfg.kv_lora_rank, cfg.qk_rope_head_dim, cfg.n_heads
    attn = d * h * dh * 2 + d * dc + dc + dc * h * (dh - dr) + dc * h * dh + d * dr
  dense_mlp = 3 * d * f
  n_moe = cfg.n_moe_layers
  expert = 3 * d * cfg.d_expert
  router = d * cfg.moe.n_experts
  qk_norms = 2 * dh if cfg.qk_norm else 0
  # attention, two norms (and the query and key norms) per layer, final norm
  layers_common = cfg.n_layers * (attn + 2 * d + qk_norms) + d
  body = layers_common + (cfg.n_layers - n_moe) * dense_mlp + n_moe * (router + cfg.moe.n_experts * expert)
  active = layers_common + (cfg.n_layers - n_moe) * dense_mlp + n_moe * (router + cfg.moe.top_k * expert)
  embed = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
  return {"total": body + embed, "non_embedding": body, "active_non_embedding": active,
          "active": active + embed}


def matmul_params(cfg: ModelConfig) -> int:
  """The matmul weights one token's forward pass multiplies by: the active non-embedding
  parameters (an MoE token's router and top_k experts) without the norm scales, which multiply
  elementwise, plus the LM head (vocab x d_model; the same table as the embedding when tied,
  whose lookup is no matmul)."""
  norms = cfg.n_layers * (2 * cfg.d_model + (2 * cfg.head_dim if cfg.qk_norm else 0)
                          + cfg.kv_lora_rank) + cfg.d_model  # + each MLA layer's latent norm
  return count_params(cfg)["active_non_embedding"] - norms + cfg.vocab_size * cfg.d_model


def attended_keys(cfg: ModelConfig, layer: int, seq_len: int) -> float:
  """The keys a query of layer `layer` attends to, on average over a sequence of seq_len: seq_len / 2
  under the causal mask, and seq_len w - w^2 / 2 pairs over seq_len (the causal triangle less the
  part beyond the window) for a sliding window w < seq_len."""
  w = cfg.layer_window(layer)
  if not w or w >= seq_len:
    return seq_len / 2
  return w - w * w / (2 * seq_len)


def flops_per_token(cfg: ModelConfig, seq_len: int, *, count_masked: bool = False) -> float:
  """Training FLOPs per token: 6 N (forward + backward matmuls) plus the attention products.

  N = matmul_params(cfg): every weight matrix a token multiplies by, the LM head (tied or not)
  included; an MoE token touches its router and top_k experts. Attention's score (Q K^T) and value
  (P V) products cost 2 * 2 * heads * d_head FLOPs per attended key in the forward pass, twice
  that backward: 12 * heads * d_head * keys per token and layer, where keys is attended_keys (a
  causal mask halves it, a sliding window shorter than the sequence cuts it further). With
  GQA the queries of every head still score every key. count_masked: count every key of the
  sequence instead, as an implementation that computes the whole score matrix does (XLA's cost
  analysis of reference attention); model FLOPs utilisation counts only the useful products.
  """
  keys = [seq_len if count_masked else attended_keys(cfg, layer, seq_len)
          for layer in range(cfg.n_layers)]
  attn = 12 * cfg.n_heads * cfg.head_dim * sum(keys)
  return 6.0 * matmul_params(cfg) + attn


def training_flops(cfg: ModelConfig, seq_len: int, tokens: float) -> float:
  """A training run's FLOPs counted in full: flops_per_token * tokens (the head and attention
  included; the compute a scaling study's fit should use, Porian et al. 2024)."""
  return flops_per_token(cfg, seq_len) * tokens


def kaplan_flops(cfg: ModelConfig, tokens: float) -> float:
  """Kaplan et al. 2020's C = 6 N D with N the non-embedding parameters (active ones for an
  MoE): no head, no attention products. For comparison only: leaving those out is what moves
  Kaplan's compute-optimal exponent away from Chinchilla's (Pearce & Song 2024)."""
  return 6.0 * count_params(cfg)["active_non_embedding"] * tokens
