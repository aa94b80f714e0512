"""Why attention divides by sqrt(d_k): the softmax at initialisation, and models trained without it.

  python -m experiments.attention_scale [--config=experiments/configs/attention_scale.py]
      [--out=results/attention_scale] [--workdir=runs/attention_scale]
      [--launcher=local|print|slurm] [--point=NAME]

Vaswani et al. (2017, section 3.2.1): if the components of q and k are independent with mean 0
and variance 1, q.k has variance d_k; large dot products push the softmax into regions of tiny
gradients, so scores are scaled by 1/sqrt(d_k). Two parts test that:

(a) init-D: for each d_k, B x T queries and B x S keys, all entries N(0, 1) (as after a normalised
    projection), values of a fixed width d_v, and a fixed random linear readout r of the attention
    output as the loss: loss = sum_t r_t . (softmax(scores_t) V). Measured with and without the
    scale: the variance of q.k, the softmax's entropy (nats, mean over queries; log S is uniform),
    its largest probability, and the norm of d loss / d scores (the gradient reaching the
    softmax's input, per query) and of d loss / d q. The same again with q and k from the
    model's own init (model/layers.py Attention, init_std 0.02, one layer of width
    config.init.model_d_model with heads of d_k, inputs of unit RMS as after RMSNorm, RoPE).
(b) train-D-scaled / -unscaled: llmlab's Transformer (model/transformer.py) of fixed width with
    heads of d_head, its attention layers swapped for StudyAttention: the same projections and
    RoPE, and a copy-for-study of the reference attention's maths with the score scale as an
    argument (1/sqrt(d_head) or 1). Trained on the standard library with llmlab's BPE,
    optimizer and loss, same seed and data order for both arms; the held-out loss is recorded.

Each point's record is cached in WORKDIR/points/NAME/result.json (NAME ends in a hash of its
settings), so a rerun skips finished points; --launcher=print / slurm hand out the pending points
as commands (train/studies/sweep.py). The report writes results.json and attention_scale.png to --out.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import sys
import time

from absl import flags

from train import cli
from train.studies import sweep as sweep_lib
from train import plots

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of this script. Defined on demand, not at import, so tests and other scripts can
  import its functions beside other experiment scripts (absl refuses a flag defined twice)."""
  sweep_lib.define_records_study_flags("attention_scale", "Cached data and one record per point.", "Where results.json and the plot go.")


# ---- (a) the softmax at initialisation -----------------------------------------------------


def softmax_statistics(q_BxTxHxD, k_BxSxHxD, v_BxSxHxDv, r_BxTxHxDv, scale: float) -> dict:
  """Statistics of softmax(scale * q.k) over the S keys (no mask), with the loss
  sum(r * attention output). Returns floats: var of q.k (unscaled), var of the scores, mean
  entropy (nats), mean largest probability, mean per-query norms of d loss / d scores and of
  d loss / d q."""
  return {k: float(v) for k, v in _softmax_statistics(
      q_BxTxHxD, k_BxSxHxD, v_BxSxHxDv, r_BxTxHxDv, scale).items()}


def _softmax_statistics_impl(q_BxTxHxD, k_BxSxHxD, v_BxSxHxDv, r_BxTxHxDv, scale):
  import jax
  import jax.numpy as jnp

  def scores_of(q):
    return jnp.einsum("bthd,bshd->bhts", q, k_BxSxHxD) * scale

  def loss_of_scores(scores_BxHxTxS):
    probs = jax.nn.softmax(scores_BxHxTxS, axis=-1)
    return jnp.sum(jnp.einsum("bhts,bshd->bthd", probs, v_BxSxHxDv) * r_BxTxHxDv)

  qk_BxHxTxS = jnp.einsum("bthd,bshd->bhts", q_BxTxHxD, k_BxSxHxD)
  scores = qk_BxHxTxS * scale
  logp = jax.nn.log_softmax(scores, axis=-1)
  p = jnp.exp(logp)
  g_scores = jax.grad(loss_of_scores)(scores)
  g_q = jax.grad(lambda q: loss_of_scores(scores_of(q)))(q_BxTxHxD)
  return {
      "var_qk": jnp.var(qk_BxHxTxS),
      "var_scores": jnp.var(scores),
      "entropy": jnp.mean(-jnp.sum(p * logp, axis=-1)),
      "max_prob": jnp.mean(jnp.max(p, axis=-1)),
      "saturated_share": jnp.mean(jnp.max(p, axis=-1) > 0.99),  # queries on one key, nearly
      "grad_scores_norm": jnp.mean(jnp.linalg.norm(g_scores, axis=-1)),
      "grad_scores_norm_median": jnp.median(jnp.linalg.norm(g_scores, axis=-1)),
      "grad_q_norm": jnp.mean(jnp.linalg.norm(g_q, axis=-1)),
  }


def _softmax_statistics(*args):
  """_softmax_statistics_impl compiled once per shape (jitted on first use: importing this
  script must not import jax)."""
  global _JITTED
  if _JITTED is None:
    import jax
    _JITTED = jax.jit(_softmax_statistics_impl)
  return _JITTED(*args)


_JITTED = None


def init_point(icfg, d_k: int) -> dict:
  """Part (a) for one d_k: unit-variance q, k, and q, k from the model's own init."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from model import layers
  from model.config import ModelConfig

  b, t, s, dv = icfg.batch, icfg.n_queries, icfg.n_keys, icfg.d_v
  kq, kk, kv, kr, kx, kp, km = jax.random.split(jax.random.key(icfg.seed), 7)
  v = jax.random.normal(kv, (b, s, 1, dv))
  r = jax.random.normal(kr, (b, t, 1, dv)) / math.sqrt(dv)  # each u_s = v_s . r_t has variance 1
  q = jax.random.normal(kq, (b, t, 1, d_k))
  k = jax.random.normal(kk, (b, s, 1, d_k))
  out = {"d_k": d_k, "log_n_keys": math.log(s)}
  for name, scale in (("scaled", d_k ** -0.5), ("unscaled", 1.0)):
    out[name] = softmax_statistics(q, k, v, r, scale)

  # The model's own init: one Attention layer, queries and keys of the same S inputs.
  d = icfg.model_d_model
  if not d:  # 0: unit-variance q and k only
    return out
  heads = d // d_k
  cfg = ModelConfig(vocab_size=256, d_model=d, n_layers=1, n_heads=heads, n_kv_heads=heads,
                    d_ff=d, max_seq_len=s, scan_layers=False, dtype="float32")
  attn = layers.Attention(cfg, nnx.Rngs(params=km))
  x = jax.random.normal(kx, (b, s, d))
  x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True))  # unit RMS, as after RMSNorm
  positions = jnp.broadcast_to(jnp.arange(s)[None], (b, s))
  qm, km_, _ = attn.project_qkv(x, positions)
  vm = jax.random.normal(kp, (b, s, heads, dv))
  rm = jax.random.normal(kr, (b, s, heads, dv)) / math.sqrt(dv)
  out["model_init"] = {"d_model": d, "n_heads": heads, "init_std": cfg.init_std,
                       "var_q_entry": float(jnp.var(qm))}
  for name, scale in (("scaled", d_k ** -0.5), ("unscaled", 1.0)):
    out["model_init"][name] = softmax_statistics(qm, km_, vm, rm, scale)
  return out


# ---- (b) training with and without the scale -----------------------------------------------


@functools.cache  # one class: models built by separate calls have equal graphdefs
def study_attention_class():
  """StudyAttention: model/layers.py Attention (projections, RoPE, output) around a copy of the
  reference attention's maths whose score scale is an argument. Built on call: importing this
  script must not import flax."""
  import jax
  import jax.numpy as jnp

  from model import layers
  from model.masks import MASK_VALUE

  class StudyAttention(layers.Attention):
    """Causal self-attention, scores = scale * q.k (MHA only: heads of q, k and v are equal)."""

    def __init__(self, base: layers.Attention, scale: float):  # pylint: disable=super-init-not-called
      # Takes over the parameters of an Attention already built, so both arms start equal.
      self.cfg = base.cfg
      self.wq, self.wk, self.wv, self.wo = base.wq, base.wk, base.wv, base.wo
      self.scale = scale

    def __call__(self, x_BxTxD, positions_BxT, segment_ids_BxT=None):
      q_BxTxHxDh, k_BxTxHxDh, v_BxTxHxDh = self.project_qkv(x_BxTxD, positions_BxT)
      t = x_BxTxD.shape[1]
      scores_BxHxTxT = jnp.einsum("bthd,bshd->bhts", q_BxTxHxDh, k_BxTxHxDh,
                                  preferred_element_type=jnp.float32) * self.scale
      causal_TxT = jnp.tril(jnp.ones((t, t), bool))
      scores_BxHxTxT = jnp.where(causal_TxT, scores_BxHxTxT, MASK_VALUE)
      probs = jax.nn.softmax(scores_BxHxTxT, axis=-1)
      o_BxTxHxDh = jnp.einsum("bhts,bshd->bthd", probs.astype(v_BxTxHxDh.dtype), v_BxTxHxDh)
      return self.project_out(o_BxTxHxDh)

  return StudyAttention


def model_config(tcfg, d_head: int):
  """The ModelConfig of part (b): MHA with heads of d_head, layers unscanned (so each block's
  attention can be swapped), float32."""
  from model.config import ModelConfig

  heads = tcfg.d_model // d_head
  return ModelConfig(vocab_size=tcfg.vocab_size, d_model=tcfg.d_model, n_layers=tcfg.n_layers,
                     n_heads=heads, n_kv_heads=heads, d_ff=tcfg.d_ff, max_seq_len=tcfg.seq_len,
                     scan_layers=False, dtype="float32")


def build_model(tcfg, d_head: int, scaled: bool, seed: int):
  """(graphdef, params) of llmlab's Transformer with StudyAttention in every layer."""
  import jax
  from flax import nnx

  from model import transformer

  model = transformer.Transformer(model_config(tcfg, d_head), nnx.Rngs(params=jax.random.key(seed)))
  study_attention = study_attention_class()
  for block in model.blocks:
    block.attn = study_attention(block.attn, d_head ** -0.5 if scaled else 1.0)
  return nnx.split(model)


def token_rows(tcfg, workdir: str):
  """(train rows, held-out rows) of seq_len + 1 tokens, and the tokenizer's size: BPE of
  vocab_size trained on the capped training text (experiments.bpe_study's code corpus), cached
  in WORKDIR/data/tokens-HASH.npz."""
  import numpy as np

  from experiments import bpe_study
  from train.data import pipeline as data_lib
  from train.data import tokenizer as tokenizer_lib

  data_seed = 0  # the text, its split and the tokenizer are the same for every model seed
  settings = [tcfg.corpus, tcfg.train_chars, tcfg.val_chars, tcfg.vocab_size, tcfg.seq_len, data_seed]
  key = hashlib.sha1(json.dumps(settings).encode()).hexdigest()[:8]
  path = os.path.join(workdir, "data", f"tokens-{key}.npz")
  if not os.path.exists(path):
    split = bpe_study.split_corpus(
        bpe_study._read(bpe_study.source_files(tcfg.corpus, data_seed)), "code",
        tcfg.train_chars, tcfg.val_chars, test_percent=10)
    tok = tokenizer_lib.train_bpe(split["train"], tcfg.vocab_size)
    rows = {s: data_lib.pack(data_lib.tokenize(split[name], tok), tcfg.seq_len)
            for s, name in (("train", "train"), ("val", "test"))}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path + ".tmp.npz", **rows)
    os.replace(path + ".tmp.npz", path)
  with np.load(path) as z:
    return z["train"], z["val"]


def train_point(tcfg, workdir: str, d_head: int, scaled: bool, seed: int) -> dict:
  """Trains one arm from one seed (the init and the batch order); returns its held-out loss, loss curve and the trained attention's entropy."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from model import transformer
  from train import optimizer, step
  from train.config import TrainSettings

  train_rows, val_rows = token_rows(tcfg, workdir)
  graphdef, params = build_model(tcfg, d_head, scaled, seed)
  tx = optimizer.make(TrainSettings(
      grad_clip=tcfg.grad_clip, lr=tcfg.lr, warmup_steps=tcfg.warmup_steps,
      weight_decay=tcfg.weight_decay), tcfg.steps)
  opt_state = tx.init(params)

  def loss_fn(p, batch_BxL1):
    logits = transformer.apply(graphdef, p, batch_BxL1[:, :-1])
    total, count = step.token_loss_sums(logits, batch_BxL1[:, 1:], pad_id=-1)
    return total / count

  @jax.jit
  def train_step(p, o, batch):
    loss, grads = jax.value_and_grad(loss_fn)(p, batch)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o, loss, optax.global_norm(grads)

  eval_loss = jax.jit(loss_fn)
  order = np.random.default_rng(seed)  # the same batches, in the same order, for both arms
  curve, start = [], time.perf_counter()
  for i in range(tcfg.steps):
    batch = train_rows[order.integers(0, len(train_rows), tcfg.batch_size)]
    params, opt_state, loss, gnorm = train_step(params, opt_state, jnp.asarray(batch))
    if i % max(1, tcfg.steps // 20) == 0 or i == tcfg.steps - 1:
      curve.append({"step": i + 1, "loss": float(loss), "grad_norm": float(gnorm)})
  n_val = min(len(val_rows), tcfg.eval_batches * tcfg.batch_size)
  val = [float(eval_loss(params, jnp.asarray(val_rows[j:j + tcfg.batch_size])))
         for j in range(0, n_val - tcfg.batch_size + 1, tcfg.batch_size)]
  if not val:
    raise ValueError("the held-out text is shorter than one batch: raise train.val_chars")
  return {"d_head": d_head, "n_heads": tcfg.d_model // d_head, "scaled": scaled, "seed": seed,
          "val_loss": float(np.mean(val)), "val_tokens": len(val) * tcfg.batch_size * tcfg.seq_len,
          "final_train_loss": curve[-1]["loss"], "curve": curve,
          "trained_attention": attention_entropy(graphdef, params, val_rows[:tcfg.batch_size]),
          "train_wall_s": time.perf_counter() - start}


def attention_entropy(graphdef, params, rows_BxL1) -> dict:
  """Mean entropy (nats) of the trained model's causal attention per layer on held-out rows,
  over queries at positions >= L/2 (so log of the visible keys is at least log(L/2)), beside the
  uniform attention's mean entropy over the same queries."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  tokens_BxT = jnp.asarray(rows_BxL1[:, :-1])
  b, t = tokens_BxT.shape

  @jax.jit  # one compile instead of one per eager op
  def per_layer(params, tokens_BxT):
    model = nnx.merge(graphdef, params)
    positions = jnp.broadcast_to(jnp.arange(t)[None], (b, t))
    x = model.embed_tokens(tokens_BxT)
    out = []
    for block in model.blocks:
      attn = block.attn
      q, k, _ = attn.project_qkv(block.attn_norm(x), positions)
      scores = jnp.einsum("bthd,bshd->bhts", q, k) * attn.scale
      scores = jnp.where(jnp.tril(jnp.ones((t, t), bool)), scores, -jnp.inf)
      logp = jax.nn.log_softmax(scores, axis=-1)
      ent_BxHxT = -jnp.sum(jnp.where(jnp.isfinite(logp), jnp.exp(logp) * logp, 0.0), axis=-1)
      out.append(jnp.mean(ent_BxHxT[..., t // 2:]))
      x = block(x, positions)
    return jnp.stack(out)

  uniform = float(np.mean(np.log(np.arange(t // 2, t) + 1.0)))
  return {"entropy_per_layer": [float(e) for e in per_layer(params, tokens_BxT)],
          "uniform_entropy": uniform}


# ---- points, report, plot ------------------------------------------------------------------


INIT_VERSION = 2  # raised when part (a) measures something new, so cached records are redone


def make_points(cfg) -> list[sweep_lib.Point]:
  def named(label: str, settings, meta: dict) -> sweep_lib.Point:
    key = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:6]
    return sweep_lib.Point(f"{label}-{key}", {}, meta)

  icfg, tcfg = cfg.init.to_dict(), cfg.train.to_dict()
  icfg.pop("d_k")
  tcfg.pop("d_head")
  seeds = tcfg.pop("seeds")
  points = [named(f"init-{d}", [d, icfg, INIT_VERSION], {"part": "init", "d_k": d})
            for d in cfg.init.d_k]
  for seed in seeds:
    for d in cfg.train.d_head:
      for scaled in (True, False):
        arm = "scaled" if scaled else "unscaled"
        label = f"train-{d}-{arm}" + (f"-seed{seed}" if seed else "")
        points.append(named(label, [d, scaled, {**tcfg, "seed": seed}],
                            {"part": "train", "d_head": d, "scaled": scaled, "seed": seed}))
  return points


def compute_point(cfg, workdir: str, point: sweep_lib.Point) -> dict:
  if point.meta["part"] == "init":
    return init_point(cfg.init, point.meta["d_k"])
  return train_point(cfg.train, workdir, point.meta["d_head"], point.meta["scaled"],
                     point.meta["seed"])


def plot(init_rows: list[dict], train_rows: list[dict], out_dir: str) -> str:
  plt = plots.pyplot()
  fig, axes = plt.subplots(2, 2, figsize=(11, 8))
  d = [r["d_k"] for r in init_rows]
  panels = (("var_scores", "variance of the scores (q.k times the scale)", "log"),
            ("entropy", "softmax entropy, nats (mean over queries)", "linear"),
            ("grad_scores_norm", "|d loss / d scores| per query", "log"))
  for ax, (key, title, yscale) in zip(axes.ravel(), panels):
    for arm, color in (("scaled", "tab:blue"), ("unscaled", "tab:red")):
      ax.plot(d, [r[arm][key] for r in init_rows], "o-", color=color, label=f"N(0,1) q, k: {arm}")
      if all("model_init" in r for r in init_rows):
        ax.plot(d, [r["model_init"][arm][key] for r in init_rows], "s--", color=color, alpha=0.6,
                label=f"model init: {arm}")
    if key == "grad_scores_norm":
      for arm, color in (("scaled", "tab:blue"), ("unscaled", "tab:red")):
        ax.plot(d, [r[arm]["grad_scores_norm_median"] for r in init_rows], ":", color=color,
                label=f"N(0,1) q, k: {arm}, median over queries")
    if key == "entropy" and init_rows:
      ax.axhline(init_rows[0]["log_n_keys"], color="gray", ls=":", label="uniform: log S")
    ax.set_xscale("log", base=2)
    ax.set_yscale(yscale)
    ax.set_xlabel("d_k")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
  ax = axes[1, 1]
  for arm, color in (("scaled", "tab:blue"), ("unscaled", "tab:red")):
    rows = [r for r in train_rows if r["scaled"] == (arm == "scaled")]
    dh = sorted({r["d_head"] for r in rows})
    mean = [sum(r["val_loss"] for r in rows if r["d_head"] == d) / sum(r["d_head"] == d for r in rows)
            for d in dh]
    ax.plot(dh, mean, "o-", color=color, label=f"{arm}: mean over seeds")
    ax.plot([r["d_head"] for r in rows], [r["val_loss"] for r in rows], "x", color=color, alpha=0.6,
            label=f"{arm}: each seed")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("d_head (fixed width: heads = d_model / d_head)")
  ax.set_title("held-out loss after training (nats/token)", fontsize=10)
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8)
  path = os.path.join(out_dir, "attention_scale.png")
  plots.save(fig, path, dpi=110)
  return path


def arm_name(d_head: int, scaled: bool) -> str:
  return f"{d_head}-{'scaled' if scaled else 'unscaled'}"


def _by_arm(train_rows: list[dict]) -> dict:
  """(d_head, scaled) -> the records of that arm, one per seed; sorted by d_head, scaled first."""
  out = {}
  for r in sorted(train_rows, key=lambda r: (r["d_head"], not r["scaled"], r["seed"])):
    out.setdefault((r["d_head"], r["scaled"]), []).append(r)
  return out


def report(cfg, workdir: str, points, out_dir: str) -> dict:
  records = sweep_lib.collect(workdir, points)
  init_rows = sorted((r for r in records if r["meta"]["part"] == "init"), key=lambda r: r["d_k"])
  # Records written before seeds were a setting are seed 0's.
  train_rows = [{"seed": 0, **r} for r in records if r["meta"]["part"] == "train"]
  os.makedirs(out_dir, exist_ok=True)
  keys = ("var_qk", "var_scores", "entropy", "max_prob", "saturated_share", "grad_scores_norm",
          "grad_scores_norm_median", "grad_q_norm")
  summary = {
      "study": "attention_scale", "machine": sweep_lib.machine_info(),
      "settings": {"init": cfg.init.to_dict(), "train": cfg.train.to_dict()},
      "init": {str(r["d_k"]): {
          "log_n_keys": round(r["log_n_keys"], 4),
          **{arm: {k: r[arm][k] for k in keys} for arm in ("scaled", "unscaled")},
          **({"model_init": {"var_q_entry": r["model_init"]["var_q_entry"],
                             **{arm: {k: r["model_init"][arm][k] for k in keys}
                                for arm in ("scaled", "unscaled")}}} if "model_init" in r else {})}
          for r in init_rows},
      "train": {arm_name(d, scaled): {
          "d_head": d, "n_heads": cfg.train.d_model // d, "scaled": scaled,
          "val_loss_mean": sum(r["val_loss"] for r in rows) / len(rows),
          "seeds": {str(r["seed"]): {k: r[k] for k in (
              "val_loss", "final_train_loss", "val_tokens", "trained_attention", "train_wall_s")}
              for r in rows}}
          for (d, scaled), rows in _by_arm(train_rows).items()},
      "curves": {f"{arm_name(r['d_head'], r['scaled'])}-seed{r['seed']}": r["curve"] for r in train_rows},
  }
  summary["plot"] = os.path.basename(plot(init_rows, train_rows, out_dir))
  sweep_lib.write_json(os.path.join(out_dir, "results.json"), summary)
  return summary


def main(argv):
  del argv
  summary = sweep_lib.run_records_study(
      FLAGS, make_points=make_points, compute_point=compute_point, report=report)
  if summary is None:
    return
  brief = {"init": {d: {arm: round(v[arm]["entropy"], 3) for arm in ("scaled", "unscaled")}
                    for d, v in summary["init"].items()},
           "val_loss_mean": {k: round(v["val_loss_mean"], 4) for k, v in summary["train"].items()}}
  print(cli.format_summary(brief), file=sys.stderr if FLAGS.launcher == "print" else sys.stdout)


if __name__ == "__main__":
  cli.run(main, define_flags)
