"""The coordinate check of muP (Yang et al. 2022, "Tensor Programs V"): does any layer's activation
scale drift with width?

Models that differ only in d_model (depth, heads, batch, data and steps fixed; d_ff a fixed
multiple of d_model) train a few Adam steps at one learning rate. After each step the RMS of every
layer's output (the embedding, each block's attention and MLP outputs, the logits) is recorded
on a fixed batch, and a line is fitted to log RMS against log width per layer and step: its slope
says how that layer's coordinates scale with width. Under a correct muP every slope is near 0
once training moves the weights (at initialisation muP's logits shrink as 1/sqrt(width), by
design); under the standard parametrization the update-driven part of the hidden activations
and the logits grows with width. A wrong multiplier shows as a slope.

The optimizer is Adam at a constant learning rate (no warmup, decay or clipping, which would
couple the widths' updates), with each parameter's muP learning rate multiplier applied by the
same train/optimizer.with_lr_multipliers that make() uses.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import subprocess
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from model import transformer
from model.config import ModelConfig
from train import optimizer as optimizer_lib


@dataclasses.dataclass(frozen=True)
class CoordCheck:
  """One coordinate check: the model family, the widths and the training it runs."""

  widths: tuple[int, ...] = (32, 64, 96, 128, 192, 256)
  base_width: int = 32  # muP's base model (m = width / base_width)
  n_layers: int = 2
  n_heads: int = 4  # fixed: the head widens with d_model
  ff_mult: int = 4  # d_ff = ff_mult * d_model
  vocab_size: int = 256
  seq_len: int = 32
  batch_size: int = 8
  steps: int = 5
  lr: float = 1e-2
  seeds: int = 2  # the RMS is averaged over seeds before the fit

  def __post_init__(self):
    if len(self.widths) < 2 or any(w % self.n_heads for w in self.widths):
      raise ValueError(f"widths={self.widths} need at least two, each divisible by n_heads="
                       f"{self.n_heads}")

  def model_config(self, width: int, parametrization: str) -> ModelConfig:
    return ModelConfig(
        vocab_size=self.vocab_size, d_model=width, n_layers=self.n_layers, n_heads=self.n_heads,
        n_kv_heads=self.n_heads, d_ff=self.ff_mult * width, max_seq_len=self.seq_len,
        tie_embeddings=False, scan_layers=False, dtype="float32",
        parametrization=parametrization,
        base_width=self.base_width if parametrization == "mup" else 0)


def _rms(x: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))


def layer_outputs(model: transformer.Transformer, tokens_BxT: jax.Array) -> dict[str, jax.Array]:
  """Every layer's output on tokens, in order: embedding, blockI.attn, blockI.mlp, logits.

  The forward of Transformer.forward_with_aux written out block by block (an unscanned, dense
  model), so each branch's output before it joins the residual stream can be read.
  """
  b, t = tokens_BxT.shape
  positions_BxT = jnp.broadcast_to(jnp.arange(t)[None], (b, t))
  x_BxTxD = model.embed_tokens(tokens_BxT)
  outs = {"embedding": x_BxTxD}
  for i, block in enumerate(model.blocks):
    a_BxTxD = block.attn(block.attn_norm(x_BxTxD), positions_BxT)
    x_BxTxD = x_BxTxD + a_BxTxD
    m_BxTxD = block.mlp(block.mlp_norm(x_BxTxD))
    x_BxTxD = x_BxTxD + m_BxTxD
    outs[f"block{i}.attn"], outs[f"block{i}.mlp"] = a_BxTxD, m_BxTxD
  outs["logits"] = model.logits(x_BxTxD)
  return outs


def train_and_record(cfg: ModelConfig, check: CoordCheck,
                     seeds: Sequence[int]) -> list[dict[str, np.ndarray]]:
  """Per seed: layer -> RMS after each of steps 0 (initialisation) .. check.steps, (steps + 1,).

  Initialisation, the steps (a lax.scan) and the records are one jitted function of the seed's
  key: one compile per width, whatever the number of seeds.
  """
  graphdef, _ = transformer.abstract(cfg)
  tx = optimizer_lib.with_lr_multipliers(optax.adam(check.lr))

  def rms_of_layers(params, inputs_BxT):
    outs = layer_outputs(nnx.merge(graphdef, params), inputs_BxT)
    return {k: _rms(v) for k, v in outs.items()}

  @jax.jit
  def history(key):
    key_params, key_data = jax.random.split(key)
    params = transformer.create(cfg, key_params)[1]
    tokens_BxL = jax.random.randint(key_data, (check.batch_size, check.seq_len + 1), 0,
                                    check.vocab_size)
    inputs_BxT, targets_BxT = tokens_BxL[:, :-1], tokens_BxL[:, 1:]

    def loss(p):
      logits = nnx.merge(graphdef, p)(inputs_BxT)
      return optax.softmax_cross_entropy_with_integer_labels(logits, targets_BxT).mean()

    def step(carry, _):
      p, opt_state = carry
      updates, opt_state = tx.update(jax.grad(loss)(p), opt_state, p)
      p = optax.apply_updates(p, updates)
      return (p, opt_state), rms_of_layers(p, inputs_BxT)

    _, after_S = jax.lax.scan(step, (params, tx.init(params)), None, length=check.steps)
    at_init = rms_of_layers(params, inputs_BxT)
    return {k: jnp.concatenate([at_init[k][None], after_S[k]]) for k in at_init}

  return [{k: np.asarray(v, np.float64) for k, v in history(jax.random.key(seed)).items()}
          for seed in seeds]


def slopes(widths: Sequence[int], rms_by_width: Sequence[dict[str, np.ndarray]]) -> dict[str, list[float]]:
  """Layer -> the least-squares slope of log RMS against log width at each step."""
  log_w = np.log(np.asarray(widths, np.float64))
  out = {}
  for layer in rms_by_width[0]:
    log_rms_WxS = np.log(np.stack([r[layer] for r in rms_by_width]))
    out[layer] = [float(np.polyfit(log_w, log_rms_WxS[:, s], 1)[0])
                  for s in range(log_rms_WxS.shape[1])]
  return out


def run(check: CoordCheck, parametrization: str) -> dict:
  """RMS (layer -> width -> per step, seed-averaged) and slopes for one parametrization."""
  per_width = []
  for width in check.widths:
    cfg = check.model_config(width, parametrization)
    runs = train_and_record(cfg, check, range(check.seeds))
    per_width.append({k: np.mean([r[k] for r in runs], axis=0) for k in runs[0]})
  return {"rms": {layer: {str(w): r[layer].tolist() for w, r in zip(check.widths, per_width)}
                  for layer in per_width[0]},
          "slopes": slopes(check.widths, per_width)}


def provenance() -> dict:
  """The commit, whether tracked files had uncommitted changes, the command, date and machine."""
  def git(*args: str) -> str:
    try:
      return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
      return ""

  dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
  return {"commit": git("rev-parse", "HEAD"), "dirty": dirty,
          "argv": sys.argv, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
          "jax": jax.__version__, "backend": jax.default_backend(), "cpu_count": os.cpu_count()}


def plot(results: dict, path: str) -> None:
  """RMS at the last step against width, one line per layer, one panel per parametrization."""
  from train import plots

  plt = plots.pyplot()
  params = results["parametrizations"]
  fig, axes = plt.subplots(1, len(params), figsize=(5.5 * len(params), 4.2), sharey=True)
  for ax, (name, res) in zip(np.atleast_1d(axes), params.items()):
    widths = results["widths"]
    for layer, by_width in res["rms"].items():
      ax.plot(widths, [by_width[str(w)][-1] for w in widths], marker="o",
              label=f"{layer} (slope {res['slopes'][layer][-1]:+.2f})")
    ax.set(xscale="log", yscale="log", xlabel="d_model",
           title=f"{name}: RMS after step {results['steps']}")
    ax.legend(fontsize=7)
  np.atleast_1d(axes)[0].set_ylabel("activation RMS")
  plots.save(fig, path, dpi=110)
