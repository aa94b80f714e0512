"""Part (b) of the 1/sqrt(d_k) study: models trained with and without the score scale.

llmlab's Transformer (model/transformer.py) of fixed width with heads of d_head, its attention
layers swapped for StudyAttention: the same projections and RoPE, and a copy-for-study of the
reference attention's maths with the score scale as an argument (1/sqrt(d_head) or 1;
model/attention.py is untouched). Trained on the standard library's code
(train/studies/bpe_corpus.py) with llmlab's BPE, optimizer, loss and train step (train/state.py
over train/step.py lm_loss, run by train/loop.py run_steps), the same seed and data order for
both arms; the held-out loss and the trained attention's entropy are recorded.

jax and flax are imported on first use: importing this module (and
experiments/attention_scale.py, which hands out points with --launcher=print) must not import
them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time


@functools.cache  # one class: models built by separate calls have equal graphdefs
def study_attention_class():
  """StudyAttention: model/layers.py Attention (projections, RoPE, output) around a copy of the
  reference attention's maths whose score scale is an argument. Built on call: importing this
  module must not import flax."""
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
  vocab_size trained on the capped training text (train/studies/bpe_corpus.py's code
  corpus), cached in WORKDIR/data/tokens-HASH.npz."""
  import numpy as np

  from train.data import pipeline as data_lib
  from train.data import tokenizer as tokenizer_lib
  from train.studies import bpe_corpus

  data_seed = 0  # the text, its split and the tokenizer are the same for every model seed
  settings = [tcfg.corpus, tcfg.train_chars, tcfg.val_chars, tcfg.vocab_size, tcfg.seq_len, data_seed]
  key = hashlib.sha1(json.dumps(settings).encode()).hexdigest()[:8]
  path = os.path.join(workdir, "data", f"tokens-{key}.npz")
  if not os.path.exists(path):
    split = bpe_corpus.split_corpus(
        bpe_corpus.read_sources(bpe_corpus.source_files(tcfg.corpus, data_seed)), "code",
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
  """Trains one arm from one seed (the init and the batch order) with the library's train step on
  one device; returns its held-out loss, loss curve and the trained attention's entropy. A state
  that turns NaN or Inf stops the point with loop.NonFiniteLoss, and SIGINT / SIGTERM stop it
  unrecorded; either way a rerun trains it again."""
  import jax
  import numpy as np

  from train import loop

  train_rows, val_rows = token_rows(tcfg, workdir)
  graphdef, params = build_model(tcfg, d_head, scaled, seed)
  training = sharded_training(tcfg, graphdef, params, seed)
  order = np.random.default_rng(seed)  # the same batches, in the same order, for both arms

  def train_step(_, state):
    batch = train_rows[order.integers(0, len(train_rows), tcfg.batch_size)]
    return training.train_step(state, jax.device_put(batch, training.batch_sharding))

  curve, every = [], max(1, tcfg.steps // 20)

  def report(step, metrics, _):  # step counts from 1; the 1st, every `every`-th and the last
    if (step - 1) % every == 0 or step == tcfg.steps:
      curve.append({"step": step, "loss": float(metrics["loss"]),
                    "grad_norm": float(metrics["grad_norm"])})
    return {}

  state = training.init(params)
  start = time.perf_counter()
  state, done, signalled, _ = loop.run_steps(
      state, 0, tcfg.steps, train_step,
      loop.Hooks(report=report, save=lambda *_: None, must_save=lambda _: False))
  if done < tcfg.steps:  # not recorded: a rerun trains this point again
    raise KeyboardInterrupt(f"stopped by {signalled} after step {done} of {tcfg.steps}")
  params = state["params"]
  val = held_out_losses(tcfg, graphdef, params, val_rows)
  return {"d_head": d_head, "n_heads": tcfg.d_model // d_head, "scaled": scaled, "seed": seed,
          "val_loss": float(np.mean(val)), "val_tokens": len(val) * tcfg.batch_size * tcfg.seq_len,
          "final_train_loss": curve[-1]["loss"], "curve": curve,
          "trained_attention": attention_entropy(graphdef, params, val_rows[:tcfg.batch_size]),
          "train_wall_s": time.perf_counter() - start}


def sharded_training(tcfg, graphdef, params, seed: int):
  """train/state.py's ShardedTraining of the study model on one device (ZeRO 0): lm_loss over
  rows (B, L+1) with no padding, AdamW as train.* says, starting from `params`."""
  import jax

  from sharding import mesh as mesh_lib
  from train import optimizer, state as state_lib, step
  from train.config import TrainSettings

  settings = TrainSettings(
      steps=tcfg.steps, batch_size=tcfg.batch_size, grad_clip=tcfg.grad_clip, lr=tcfg.lr,
      warmup_steps=tcfg.warmup_steps, weight_decay=tcfg.weight_decay, seed=seed)
  return state_lib.build_sharded_training(
      graphdef, lambda p: p, params, step.lm_loss(graphdef, pad_id=-1),
      optimizer.make(settings, settings.steps),
      lr_schedule=optimizer.schedule(settings.lr, settings.warmup_steps, settings.steps),
      grad_accum=1, seed=seed, mesh=mesh_lib.make_mesh({"data": 1}, jax.devices()[:1]),
      zero_stage=0)


def held_out_losses(tcfg, graphdef, params, val_rows) -> list[float]:
  """The mean next-token loss of each whole batch of held-out rows, up to eval_batches batches."""
  import jax
  import jax.numpy as jnp

  from train import step

  eval_step = jax.jit(step.make_eval_step(graphdef, pad_id=-1))
  n_val = min(len(val_rows), tcfg.eval_batches * tcfg.batch_size)
  val = []
  for j in range(0, n_val - tcfg.batch_size + 1, tcfg.batch_size):
    total, count = eval_step(params, jnp.asarray(val_rows[j:j + tcfg.batch_size]))
    val.append(float(total / count))
  if not val:
    raise ValueError("the held-out text is shorter than one batch: raise train.val_chars")
  return val


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

