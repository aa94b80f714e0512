"""A Hugging Face config.json (Llama 2/3.x, Mixtral or Qwen3) <-> ModelConfig.

Import is strict: a setting that changes what the model computes and that llmlab lacks is refused
with a one-line InteropError naming the field, never turned into a model whose logits silently
differ. Settings that only act in training inside transformers (attention_dropout,
router_jitter_noise), speed knobs (pretraining_tp, use_cache) and bookkeeping (token ids,
transformers_version) do not change the function and are accepted.

Field names follow transformers' LlamaConfig, MixtralConfig and Qwen3Config. Two generations of
the rotary settings exist: transformers < 5 writes `rope_theta` and `rope_scaling` at the top
level, 5.x writes `rope_parameters = {"rope_type": ..., "rope_theta": ..., "factor": ...}`. Both are
read; both are written, so either generation loads the export. The rope types llmlab computes are
default, llama3 (Llama 3.1 and 3.2) and yarn (model/rope.py); Qwen3's per-head query and key
norms are model.qk_norm, and its head width, decoupled from hidden_size / heads, model.d_head.
"""

from __future__ import annotations

from typing import Any, Optional

import math

from model.config import ModelConfig
from model.moe import MoEConfig
from model.rope import RopeScaling

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                 "mixtral": "MixtralForCausalLM", "qwen3": "Qwen3ForCausalLM"}
# transformers' defaults for fields a config.json may leave out.
_DEFAULTS = {
    "llama": {"rope_theta": 10000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 2048},
    "mistral": {"rope_theta": 10000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 4096 * 32},
    "mixtral": {"rope_theta": 1e6, "rms_norm_eps": 1e-5, "max_position_embeddings": 4096 * 32},
    "qwen3": {"rope_theta": 10000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 32768,
              "head_dim": 128},
}
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads")
# What export writes itself; anything else in a base config (token ids, generation settings)
# is carried over unchanged.
_OWNED = (
    "architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size",
    "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
    "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_parameters", "rope_scaling",
    "attention_bias", "mlp_bias", "tie_word_embeddings", "dtype", "torch_dtype",
    "num_local_experts", "num_experts_per_tok", "router_aux_loss_coef", "sliding_window",
    "partial_rotary_factor", "use_sliding_window", "layer_types", "max_window_layers",
)


class InteropError(ValueError):
  """A checkpoint or config that llmlab cannot represent exactly; the message names the field."""


def _refuse(field: str, value: Any, why: str) -> InteropError:
  return InteropError(f"config.json: {field}={value!r} is not supported: {why}")


# The keys each rope type reads, besides rope_type / type and rope_theta.
_ROPE_KEYS = {
    "default": (),
    "llama3": ("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"),
    "yarn": ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
             "attention_factor", "mscale", "mscale_all_dim", "truncate"),
}


def _rope_settings(hf: dict) -> dict:
  """One mapping of the rotary settings, from rope_parameters (5.x) and/or rope_scaling (< 5)."""
  merged: dict = {}
  for field in ("rope_scaling", "rope_parameters"):
    value = hf.get(field)
    if value is None:
      continue
    if not isinstance(value, dict):
      raise _refuse(field, value, "expected a mapping")
    value = dict(value)
    if "type" in value:  # the older spelling of rope_type
      value.setdefault("rope_type", value.pop("type"))
    for key, v in value.items():
      if key in merged and merged[key] != v:
        raise InteropError(
            f"config.json: rope_scaling.{key}={merged[key]!r} contradicts "
            f"rope_parameters.{key}={v!r}")
      merged[key] = v
  return merged


def _field(hf: dict, key: str) -> str:
  """The dotted name of a rotary setting as the config.json spells it, for error messages."""
  holders = [f for f in ("rope_parameters", "rope_scaling") if isinstance(hf.get(f), dict)]
  holder = next((f for f in holders if key in hf[f]), holders[0] if holders else "rope_parameters")
  return f"{holder}.{key}"


def _yarn_attention_factor(r: dict, factor: float) -> float:
  """0 (llmlab's default: 0.1 ln(factor) + 1) unless the config fixes it, directly or through
  DeepSeek's mscale / mscale_all_dim ratio."""
  if r.get("attention_factor") is not None:
    return float(r["attention_factor"])
  mscale, mscale_all = r.get("mscale"), r.get("mscale_all_dim")
  if mscale and mscale_all:
    m = lambda k: 0.1 * k * math.log(factor) + 1.0 if factor > 1 else 1.0  # noqa: E731
    return m(mscale) / m(mscale_all)
  return 0.0


def _rope(hf: dict, model_type: str, max_pos: int) -> tuple[float, RopeScaling]:
  """(rope_theta, RopeScaling) of a config.json; anything llmlab's RoPE lacks is refused."""
  r = _rope_settings(hf)
  rope_type = r.get("rope_type", "default")
  if rope_type not in _ROPE_KEYS:
    raise _refuse(_field(hf, "rope_type"), rope_type,
                  f"llmlab's RoPE computes {', '.join(_ROPE_KEYS)} (model/rope.py)")
  for key, value in r.items():
    if key in ("rope_type", "rope_theta") or key in _ROPE_KEYS[rope_type]:
      continue
    if key == "partial_rotary_factor" and value == 1.0:
      continue
    raise _refuse(_field(hf, key), value, f"rope_type {rope_type!r} in llmlab has no such setting")
  theta = hf.get("rope_theta")
  if "rope_theta" in r:
    if theta is not None and float(theta) != float(r["rope_theta"]):
      raise InteropError(
          f"config.json: rope_theta={theta!r} contradicts rope_parameters.rope_theta="
          f"{r['rope_theta']!r}")
    theta = r["rope_theta"]
  if hf.get("partial_rotary_factor", 1.0) != 1.0:
    raise _refuse("partial_rotary_factor", hf["partial_rotary_factor"],
                  "llmlab rotates every dimension of a head")
  theta = float(theta if theta is not None else _DEFAULTS[model_type]["rope_theta"])
  if rope_type == "default":
    return theta, RopeScaling()
  original = r.get("original_max_position_embeddings")
  if not isinstance(original, int):
    raise _refuse(_field(hf, "original_max_position_embeddings"), original,
                  f"rope_type {rope_type!r} needs the original context as an integer")
  factor = r.get("factor")
  if factor is None and rope_type == "yarn":
    factor = max_pos / original
  if rope_type == "yarn" and r.get("truncate", True) is not True:
    raise _refuse(_field(hf, "truncate"), r["truncate"], "llmlab's yarn truncates (the default)")
  common = dict(kind=rope_type, factor=float(factor), original_max_seq_len=original)
  try:
    if rope_type == "llama3":
      return theta, RopeScaling(
          **common, low_freq_factor=float(r.get("low_freq_factor", 1.0)),
          high_freq_factor=float(r.get("high_freq_factor", 4.0)))
    return theta, RopeScaling(
        **common, beta_fast=float(r.get("beta_fast") or 32), beta_slow=float(r.get("beta_slow") or 1),
        attention_factor=_yarn_attention_factor(r, float(factor)))
  except (TypeError, ValueError) as e:
    raise InteropError(f"config.json: rope_parameters cannot be represented: {e}") from None


def _rope_fields(cfg: ModelConfig) -> dict:
  """rope_parameters (5.x) and rope_scaling (< 5) of cfg's RoPE."""
  s = cfg.rope_scaling
  params = {"rope_type": s.kind if s.enabled else "default", "rope_theta": cfg.rope_theta}
  if s.kind == "llama3":
    params.update(factor=s.factor, original_max_position_embeddings=s.original_max_seq_len,
                  low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor)
  elif s.kind == "yarn":
    params.update(factor=s.factor, original_max_position_embeddings=s.original_max_seq_len,
                  beta_fast=s.beta_fast, beta_slow=s.beta_slow)
    if s.attention_factor:
      params["attention_factor"] = s.attention_factor
  scaling = {k: v for k, v in params.items() if k != "rope_theta"} if s.enabled else None
  return {"rope_theta": cfg.rope_theta, "rope_parameters": params, "rope_scaling": scaling}


def to_model_config(hf: dict, *, param_dtype: str = "float32", dtype: str = "float32",
                    scan_layers: bool = True) -> ModelConfig:
  """The ModelConfig of a Llama, Mixtral or Qwen3 config.json, or a one-line InteropError."""
  model_type = hf.get("model_type")
  if model_type not in ARCHITECTURES:
    raise _refuse("model_type", model_type, f"llmlab imports {', '.join(ARCHITECTURES)}")
  archs = hf.get("architectures") or [ARCHITECTURES[model_type]]
  if archs != [ARCHITECTURES[model_type]]:
    raise _refuse("architectures", archs, f"expected [{ARCHITECTURES[model_type]!r}]")
  for name in _REQUIRED:
    if not isinstance(hf.get(name), int):
      raise InteropError(f"config.json: {name} is missing or not an integer ({hf.get(name)!r})")
  if hf.get("hidden_act", "silu") != "silu":
    raise _refuse("hidden_act", hf["hidden_act"], "llmlab's MLP is SwiGLU with silu")
  for name in ("attention_bias", "mlp_bias"):
    if hf.get(name, False):
      raise _refuse(name, hf[name], "llmlab's projections have no bias")
  defaults = _DEFAULTS[model_type]
  d, h = hf["hidden_size"], hf["num_attention_heads"]
  head_dim = hf.get("head_dim") or defaults.get("head_dim")
  if head_dim is not None and not isinstance(head_dim, int):
    raise _refuse("head_dim", head_dim, "expected an integer")
  # A head width other than hidden_size / heads is model.d_head (Qwen3 decouples the two).
  d_head = 0 if head_dim is None or (d % h == 0 and head_dim == d // h) else head_dim
  max_pos = hf.get("max_position_embeddings") or defaults["max_position_embeddings"]
  window = hf.get("sliding_window")
  if model_type == "qwen3" and hf.get("use_sliding_window", False):
    # Qwen3's window acts on the layers from max_window_layers on: a per-layer pattern.
    raise _refuse("use_sliding_window", True,
                  "Qwen3 mixes windowed and full layers, and llmlab's window is one for all layers")
  if model_type == "qwen3" or model_type == "llama" or window is None or window >= max_pos:
    window = 0  # Qwen3 and Llama ignore sliding_window; a window as long as the context is none
  if not isinstance(window, int) or window < 0:
    raise _refuse("sliding_window", window, "expected a non-negative integer")
  layer_types = hf.get("layer_types")
  if layer_types and set(layer_types) != {"full_attention"} and not (
      window and set(layer_types) == {"sliding_attention"}):
    raise _refuse("layer_types", sorted(set(layer_types)),
                  "llmlab's layers attend all in the same way (model.sliding_window)")
  moe = MoEConfig()
  if model_type == "mixtral":
    # Mixtral's MoE: every layer, softmax over all experts, top-k renormalised, no token
    # dropped (dropless dispatch), no z-loss; the jitter noise only acts in training.
    moe = MoEConfig(
        n_experts=hf.get("num_local_experts", 8), top_k=hf.get("num_experts_per_tok", 2),
        every=1, d_expert=0, dispatch="dropless",
        aux_loss_weight=float(hf.get("router_aux_loss_coef", 0.02)), z_loss_weight=0.0)
  theta, scaling = _rope(hf, model_type, max_pos)
  try:
    return ModelConfig(
        vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["num_hidden_layers"], n_heads=h,
        n_kv_heads=hf.get("num_key_value_heads") or h, d_ff=hf["intermediate_size"],
        max_seq_len=max_pos, rope_theta=theta, rope_scaling=scaling, d_head=d_head,
        qk_norm=model_type == "qwen3", sliding_window=window,
        norm_eps=float(hf.get("rms_norm_eps", defaults["rms_norm_eps"])),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), dtype=dtype,
        param_dtype=param_dtype, scan_layers=scan_layers,
        init_std=float(hf.get("initializer_range", 0.02)), moe=moe)
  except InteropError:
    raise
  except ValueError as e:
    raise InteropError(f"config.json describes a model llmlab cannot build: {e}") from None


def model_type_of(cfg: ModelConfig) -> str:
  """The Hugging Face family that computes what cfg computes: Mixtral for MoE, Qwen3 for
  QK-norm, Mistral for a sliding window, Llama otherwise."""
  if cfg.kv_lora_rank:
    raise InteropError("model.kv_lora_rank (latent attention) has no Hugging Face family llmlab "
                       "exports")
  if cfg.global_every:
    raise InteropError("model.global_every (local and global layers) has no Hugging Face family "
                       "llmlab exports")
  if cfg.qk_norm and (cfg.moe.enabled or cfg.sliding_window):
    raise InteropError("model.qk_norm with model.moe or model.sliding_window has no Hugging Face "
                       "family llmlab exports (Qwen3 has QK-norm but no experts and no window "
                       "on every layer)")
  if cfg.moe.enabled:
    return "mixtral"
  return "qwen3" if cfg.qk_norm else "mistral" if cfg.sliding_window else "llama"


def from_model_config(cfg: ModelConfig, *, dtype: str, base: Optional[dict] = None) -> dict:
  """The config.json of cfg as a Llama (dense), Mixtral (MoE) or Qwen3 (QK-norm) model.

  base: a config.json to extend (the one the model was imported from), so that fields llmlab
  does not model (token ids, generation defaults) survive a round trip.
  """
  model_type = model_type_of(cfg)
  if cfg.moe.enabled and cfg.moe.every != 1:
    raise InteropError(
        f"model.moe.every={cfg.moe.every} has no Mixtral equivalent: Mixtral makes every layer MoE")
  keep = base if base and base.get("model_type") == model_type else {}
  out = {k: v for k, v in keep.items() if k not in _OWNED}
  out.update({
      "architectures": [ARCHITECTURES[model_type]],
      "model_type": model_type,
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.d_model,
      "intermediate_size": cfg.d_expert if cfg.moe.enabled else cfg.d_ff,
      "num_hidden_layers": cfg.n_layers,
      "num_attention_heads": cfg.n_heads,
      "num_key_value_heads": cfg.n_kv_heads,
      "head_dim": cfg.head_dim,
      "hidden_act": "silu",
      "max_position_embeddings": cfg.max_seq_len,
      "rms_norm_eps": cfg.norm_eps,
      **_rope_fields(cfg),  # rope_theta and rope_scaling (read by transformers < 5), rope_parameters
      "tie_word_embeddings": cfg.tie_embeddings,
      "dtype": dtype,  # the name in transformers 5.x; torch_dtype before
      "torch_dtype": dtype,
  })
  out.setdefault("initializer_range", cfg.init_std)
  if model_type == "mixtral":
    out.update({
        "num_local_experts": cfg.moe.n_experts,
        "num_experts_per_tok": cfg.moe.top_k,
        "router_aux_loss_coef": cfg.moe.aux_loss_weight,
        "sliding_window": cfg.sliding_window or None,
    })
  elif model_type == "mistral":
    out["sliding_window"] = cfg.sliding_window
  else:
    out.update({"attention_bias": False})
    if model_type == "llama":
      out["mlp_bias"] = False
    else:
      out.update({"use_sliding_window": False, "sliding_window": None,
                  "layer_types": ["full_attention"] * cfg.n_layers})
  return out
