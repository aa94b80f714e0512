"""The decode roofline: memory bandwidth measured here, and the bound it sets on decoding.

Every decode step reads all the weights and the whole allocated KV cache, so a step cannot be
faster than (weight bytes + cache bytes) / bandwidth; batch B emits B tokens per step.
Nothing here imports grain, ml_collections or tokenizers (experiments.accelerator runs it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from train.studies import decode_speed
from train.studies.bench_timing import best_time


def measure_bandwidth(n_bytes: int, repeats: int) -> dict[str, float]:
  """Memory bandwidth in bytes/s on an n_bytes buffer, three ways.

  copy: the faster of numpy's copyto (one thread) and XLA's in-place x + 1 (all threads); both
  read and write n_bytes. matvec_read: XLA's float32 matrix-vector product, reading n_bytes:
  the operation batch-1 decoding is made of.
  """
  n = n_bytes // 4
  a = np.ones(n, np.float32)
  b = np.empty_like(a)
  numpy_s = best_time(lambda: np.copyto(b, a), repeats)
  del a, b
  x = jnp.ones((n // 512, 512), jnp.float32)
  v = jnp.ones((512,), jnp.float32)
  matvec = jax.jit(lambda x, v: x @ v)
  jax.block_until_ready(matvec(x, v))
  matvec_s = best_time(lambda: jax.block_until_ready(matvec(x, v)), repeats)
  bump = jax.jit(lambda x: x + 1.0, donate_argnums=0)  # donated: in place, no fresh pages
  holder = [jax.block_until_ready(bump(x))]
  del x

  def step():
    holder[0] = jax.block_until_ready(bump(holder[0]))

  xla_s = best_time(step, repeats)
  moved = 2 * (n // 512) * 512 * 4
  return {"bytes": n_bytes, "numpy_copy_bytes_per_s": 2 * n * 4 / numpy_s,
          "xla_inplace_bytes_per_s": moved / xla_s,
          "copy_bytes_per_s": max(2 * n * 4 / numpy_s, moved / xla_s),
          "matvec_read_bytes_per_s": moved / 2 / matvec_s}


def param_bytes(params) -> int:
  """Bytes of every array in a pytree of parameters."""
  return int(sum(x.nbytes for x in jax.tree.leaves(params)))


def random_model_against_bound(s: dict, on_cpu: bool) -> dict:
  """experiments.accelerator's decode section: greedy decode tokens/s of a randomly initialised
  model (s["decode"]) with its cache filled to the context, at each batch, against the bound
  batch x copy bandwidth / bytes read per step."""
  d = s["decode"]
  cfg, graphdef, params = decode_speed.random_decode_model(d, on_cpu)
  weight_bytes = param_bytes(params)
  bandwidth = measure_bandwidth(d["bandwidth_bytes"], max(d["repeats"], 3))
  rows = []
  for batch in d["batches"]:
    step_s, cache_bytes = decode_speed.step_seconds(
        cfg, graphdef, params, batch, d["context"], d["steps"], d["repeats"])
    if step_s <= 0:  # (t(1 + steps) - t(1)) / steps: noise larger than the steps' time
      raise ValueError(f"decode steps too short to time ({step_s:.3g} s); raise the step count")
    per_step = weight_bytes + cache_bytes  # every step reads the weights and the whole cache
    bound_tokens = batch * bandwidth["copy_bytes_per_s"] / per_step
    tokens = batch / step_s
    rows.append({"batch": batch, "cache_bytes": cache_bytes, "step_seconds": step_s,
                 "tokens_per_s": tokens, "bound_tokens_per_s": bound_tokens,
                 "fraction_of_bound": tokens / bound_tokens})
  return {"model": cfg.to_dict(), "context": d["context"], "weight_bytes": weight_bytes,
          "bandwidth": bandwidth, "rows": rows,
          # Batch 1's numbers at the top level, where the smoke test and the docs read them.
          **{k: rows[0][k] for k in ("batch", "tokens_per_s", "bound_tokens_per_s",
                                     "fraction_of_bound")},
          "note": "random weights and cache; bound = batch x copy bandwidth / bytes read per step"}
