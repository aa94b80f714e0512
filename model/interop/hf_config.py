"""A Hugging Face config.json (Llama or Mixtral) <-> ModelConfig.

Import is strict: a setting that changes what the model computes and that llmlab lacks is refused
with a one-line InteropError naming the field, never turned into a model whose logits silently
differ. Settings that only act in training inside transformers (attention_dropout,
router_jitter_noise), speed knobs (pretraining_tp, use_cache) and bookkeeping (token ids,
transformers_version) do not change the function and are accepted.

Field names follow transformers' LlamaConfig and MixtralConfig. Two generations of the rotary
settings exist: transformers < 5 writes `rope_theta` and `rope_scaling` at the top level, 5.x
writes `rope_parameters = {"rope_type": ..., "rope_theta": ...}`. Both are read; both are written,
so either generation loads the export.
"""

from __future__ import annotations

from typing import Any, Optional

from model.config import ModelConfig
from model.moe import MoEConfig

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mixtral": "MixtralForCausalLM"}
# transformers' defaults for fields a config.json may leave out.
_DEFAULTS = {
    "llama": {"rope_theta": 10000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 2048},
    "mixtral": {"rope_theta": 1e6, "rms_norm_eps": 1e-5, "max_position_embeddings": 4096 * 32},
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
    "partial_rotary_factor",
)


class InteropError(ValueError):
  """A checkpoint or config that llmlab cannot represent exactly; the message names the field."""


def _refuse(field: str, value: Any, why: str) -> InteropError:
  return InteropError(f"config.json: {field}={value!r} is not supported: {why}")


def _rope_theta(hf: dict, model_type: str) -> float:
  scaling = hf.get("rope_scaling")
  if scaling:
    raise _refuse("rope_scaling", scaling, "llmlab's RoPE has no frequency scaling")
  theta = hf.get("rope_theta")
  params = hf.get("rope_parameters")
  if params is not None:
    if not isinstance(params, dict):
      raise _refuse("rope_parameters", params, "expected a mapping")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
      raise _refuse("rope_parameters.rope_type", rope_type, "llmlab's RoPE is the default kind")
    for key, value in params.items():
      if key in ("rope_type", "type", "rope_theta"):
        continue
      if key == "partial_rotary_factor" and value == 1.0:
        continue
      raise _refuse(f"rope_parameters.{key}", value, "llmlab's RoPE has no such setting")
    if "rope_theta" in params:
      if theta is not None and float(theta) != float(params["rope_theta"]):
        raise InteropError(
            f"config.json: rope_theta={theta!r} contradicts rope_parameters.rope_theta="
            f"{params['rope_theta']!r}")
      theta = params["rope_theta"]
  if hf.get("partial_rotary_factor", 1.0) != 1.0:
    raise _refuse("partial_rotary_factor", hf["partial_rotary_factor"],
                  "llmlab rotates every dimension of a head")
  return float(theta if theta is not None else _DEFAULTS[model_type]["rope_theta"])


def to_model_config(hf: dict, *, param_dtype: str = "float32", dtype: str = "float32",
                    scan_layers: bool = True) -> ModelConfig:
  """The ModelConfig of a Llama or Mixtral config.json, or a one-line InteropError."""
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
  d, h = hf["hidden_size"], hf["num_attention_heads"]
  head_dim = hf.get("head_dim")
  if head_dim is not None and (d % h or head_dim != d // h):
    raise _refuse("head_dim", head_dim,
                  f"llmlab's head width is hidden_size / num_attention_heads = {d / h:g}")
  defaults = _DEFAULTS[model_type]
  max_pos = hf.get("max_position_embeddings") or defaults["max_position_embeddings"]
  moe = MoEConfig()
  if model_type == "mixtral":
    window = hf.get("sliding_window")
    if window is not None and window < max_pos:
      raise _refuse("sliding_window", window,
                    f"llmlab has no sliding-window attention and max_position_embeddings="
                    f"{max_pos} is longer")
    # Mixtral's MoE: every layer, softmax over all experts, top-k renormalised, no token
    # dropped (dropless dispatch), no z-loss; the jitter noise only acts in training.
    moe = MoEConfig(
        n_experts=hf.get("num_local_experts", 8), top_k=hf.get("num_experts_per_tok", 2),
        every=1, d_expert=0, dispatch="dropless",
        aux_loss_weight=float(hf.get("router_aux_loss_coef", 0.02)), z_loss_weight=0.0)
  try:
    return ModelConfig(
        vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["num_hidden_layers"], n_heads=h,
        n_kv_heads=hf.get("num_key_value_heads") or h, d_ff=hf["intermediate_size"],
        max_seq_len=max_pos, rope_theta=_rope_theta(hf, model_type),
        norm_eps=float(hf.get("rms_norm_eps", defaults["rms_norm_eps"])),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), dtype=dtype,
        param_dtype=param_dtype, scan_layers=scan_layers,
        init_std=float(hf.get("initializer_range", 0.02)), moe=moe)
  except InteropError:
    raise
  except ValueError as e:
    raise InteropError(f"config.json describes a model llmlab cannot build: {e}") from None


def from_model_config(cfg: ModelConfig, *, dtype: str, base: Optional[dict] = None) -> dict:
  """The config.json of cfg as a Llama (dense) or Mixtral (MoE) model.

  base: a config.json to extend (the one the model was imported from), so that fields llmlab
  does not model (token ids, generation defaults) survive a round trip.
  """
  model_type = "mixtral" if cfg.moe.enabled else "llama"
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
      "rope_theta": cfg.rope_theta,  # read by transformers < 5
      "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},  # 5.x
      "rope_scaling": None,
      "tie_word_embeddings": cfg.tie_embeddings,
      "dtype": dtype,  # the name in transformers 5.x; torch_dtype before
      "torch_dtype": dtype,
  })
  out.setdefault("initializer_range", cfg.init_std)
  if model_type == "llama":
    out.update({"attention_bias": False, "mlp_bias": False})
  else:
    out.update({
        "num_local_experts": cfg.moe.n_experts,
        "num_experts_per_tok": cfg.moe.top_k,
        "router_aux_loss_coef": cfg.moe.aux_loss_weight,
        "sliding_window": None,
    })
  return out
