"""SFT, DPO and GRPO are loss functions over the one sharded train step: at ZeRO stage 3 on 8 CPU
devices, with two micro-batches, they train as on one device.

Every metric is compared, the gradient norm included: Adam all but cancels a wrong gradient scale
in the update, so losses alone would not see gradients summed twice. The rows' completion lengths
differ, so a loss that averaged per device or per micro-batch instead of over the whole batch
(DPO's per-token NLL term, GRPO's per-sequence aggregation) would differ from the one-device run.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments.configs import alignment
from model import transformer
from model.config import ModelConfig
from sharding import mesh as mesh_lib
from train.align import data as data_lib
from train.align import dpo, grpo, sft
from train import loop, optimizer as optimizer_lib, state as state_lib
from train import step as step_lib
from train.data import tokenizer as tokenizer_lib
from train.config import TrainSettings

MODEL = ModelConfig(vocab_size=tokenizer_lib.min_vocab_size(), d_model=32, n_layers=2, n_heads=2,
                    n_kv_heads=1, d_ff=64, max_seq_len=16)
B, T, STEPS = 16, 12, 3
GRPO = ml_collections.ConfigDict(dict(
    epsilon=0.2, epsilon_high=0.28, beta=0.04, loss_agg="grpo", max_new_tokens=8,
    temperature=1.0))


def _seqs(key) -> data_lib.Sequences:
  """Random tokens; row i's completion is positions [p_i, p_i + c_i), of varying length."""
  k1, k2, k3 = jax.random.split(key, 3)
  tokens = np.asarray(jax.random.randint(k1, (B, T + 1), 0, MODEL.vocab_size), np.int32)
  start = np.asarray(jax.random.randint(k2, (B, 1), 1, 5))
  length = np.asarray(jax.random.randint(k3, (B, 1), 1, 8))
  pos = np.arange(T)[None]
  mask = ((pos >= start) & (pos < start + length)).astype(np.float32)
  return data_lib.Sequences(tokens[:, :-1], tokens[:, 1:], mask)


def _logps(key) -> np.ndarray:
  """Log-probs near those of a random model over MODEL's vocabulary (about -5.5)."""
  return np.asarray(-5.5 + 0.1 * jax.random.normal(key, (B, T)), np.float32)


def _batch(objective: str, i: int):
  key = jax.random.key(i)
  ks = jax.random.split(key, 4)
  if objective == "sft":
    return sft.batch_of(_seqs(ks[0]), np.arange(B))
  if objective == "dpo":
    ref = np.asarray(jax.random.normal(ks[2], (2, B)), np.float32) - 20.0
    return dpo.batch_of(_seqs(ks[0]), _seqs(ks[1]), ref[0], ref[1], np.arange(B), nll=True)
  adv = np.asarray(jax.random.normal(ks[1], (B,)), np.float32)
  return grpo.batch_of(_seqs(ks[0]), adv, _logps(ks[2]), _logps(ks[3]))


def _loss(objective: str, graphdef):
  if objective == "sft":
    return sft.loss(graphdef)
  if objective == "dpo":
    return dpo.loss(graphdef, beta=0.1, loss_type="sigmoid", nll_weight=0.2)
  return grpo.loss(graphdef, GRPO)


def _tx():
  t = TrainSettings.from_config(alignment.base().train)
  return optimizer_lib.make(t, STEPS), optimizer_lib.schedule(t.lr, 0, STEPS)


@functools.lru_cache(maxsize=None)
def _initial():
  """(graphdef, the initial train state on the host): every run starts from the same values, laid
  out its own way (without compiling each layout's init)."""
  graphdef, params = transformer.create(MODEL, jax.random.key(0))
  return graphdef, jax.device_get(step_lib.init_state(params, _tx()[0], 0))


def _metrics(objective: str, mesh_spec: dict, zero_stage: int, grad_accum: int) -> list[dict]:
  devices = jax.devices()[:int(np.prod(list(mesh_spec.values())))]
  mesh = mesh_lib.make_mesh(mesh_spec, devices=devices)
  graphdef, initial = _initial()
  tx, lr_schedule = _tx()
  abstract = lambda tree: jax.tree.map(  # noqa: E731
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
  training = state_lib.build_sharded_training(
      graphdef, lambda p: jax.tree.map(jnp.copy, p), abstract(initial["params"]),
      _loss(objective, graphdef), tx, lr_schedule=lr_schedule, grad_accum=grad_accum, seed=0,
      mesh=mesh, zero_stage=zero_stage, abstract_batch=abstract(_batch(objective, 0)))
  state = jax.device_put(initial, training.shardings.state)
  out = []
  for i in range(STEPS):
    batch = loop.global_batch(_batch(objective, i), training.batch_sharding)
    state, metrics = training.train_step(state, batch)
    out.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  return out


@pytest.mark.parametrize("objective", ["sft", "dpo", "grpo"])
def test_zero3_on_8_devices_trains_as_one_device(objective):
  one = _metrics(objective, {"data": 1}, 0, 1)
  sharded = _metrics(objective, {"data": 8}, 3, 1)
  assert one[-1]["loss"] != one[0]["loss"]  # the steps really trained
  for step, (a, b) in enumerate(zip(one, sharded)):
    assert a.keys() == b.keys()
    assert b["loss"] == pytest.approx(a["loss"], abs=1e-5), step
    for name in a:
      assert b[name] == pytest.approx(a[name], rel=1e-5, abs=1e-6), (step, name)
