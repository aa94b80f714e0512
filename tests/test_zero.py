"""ZeRO stages and tensor parallelism on 8 CPU devices: the same training as one device, the
collectives the compiled step really contains, and the bytes each device really holds.

Each configuration is compiled once and shared by every claim about it (runs are cached by name).
That a run moves between stages and meshes through the training loop itself is shown in
tests/test_multihost.py, where a 2-process checkpoint resumes in one process under another stage.
"""

import dataclasses
import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model.config import ModelConfig
from sharding import mesh as mesh_lib
from sharding import rules as rules_lib
from sharding import zero
from tests.helpers import tiny_config
from train import checkpoint as ckpt_lib
from train import loop
from train import step as step_lib

STEPS = 5
CONFIG = tiny_config("", **{"train.steps": STEPS})
MODEL = ModelConfig.from_dict(CONFIG.model.to_dict())
B, L1 = CONFIG.train.batch_size, CONFIG.data.seq_len + 1
PAD_ID = 0

# name: (mesh, zero_stage, grad_accum)
RUNS = {
    "stage0": ({"data": 8}, 0, 1),
    "stage1": ({"data": 8}, 1, 1),
    "stage2": ({"data": 8}, 2, 1),
    "stage3": ({"data": 8}, 3, 1),
    "tensor2_fsdp2_stage3_accum2": ({"data": 2, "fsdp": 2, "tensor": 2}, 3, 2),
}


@functools.lru_cache(maxsize=None)
def _batches(n=STEPS + 1):
  """Random token rows, a few of them padding, the same for every run."""
  out = []
  for i in range(n):
    b = np.array(jax.random.randint(jax.random.key(i), (B, L1), 0, MODEL.vocab_size), np.int32)
    b[i % B, -4:] = PAD_ID
    out.append(b)
  return out


@dataclasses.dataclass
class Run:
  training: loop.ShardedTraining
  compiled: object  # the train step, compiled once
  hlo: str
  state: dict  # after STEPS steps
  losses: list
  grad_norms: list


@functools.lru_cache(maxsize=None)
def _initial_state():
  """The initial train state on the host: every device_put of it makes new buffers, which the
  train step may then donate."""
  mesh = mesh_lib.make_mesh({"data": 1}, devices=jax.devices()[:1])
  training = loop.make_sharded_training(MODEL, CONFIG.train, mesh, 0, pad_id=PAD_ID)
  return jax.device_get(training.init(jax.random.key(0)))


@functools.lru_cache(maxsize=None)
def _run(name: str) -> Run:
  if name == "unsharded":
    mesh, stage, accum = mesh_lib.make_mesh({"data": 1}, devices=jax.devices()[:1]), 0, 1
  else:
    spec, stage, accum = RUNS[name]
    mesh = mesh_lib.make_mesh(spec)
  t = CONFIG.train.copy_and_resolve_references()
  t.grad_accum = accum
  training = loop.make_sharded_training(MODEL, t, mesh, stage, pad_id=PAD_ID)
  batch_struct = jax.ShapeDtypeStruct((B, L1), jnp.int32, sharding=training.batch_sharding)
  compiled = training.train_step.lower(training.abstract_state, batch_struct).compile()
  # Every run starts from the same values, laid out its own way. (Compiling each layout's own
  # random init would cost as much as its train step; the loop's tests cover that path.)
  state = jax.device_put(_initial_state(), training.shardings.state)
  losses, norms = [], []
  for b in _batches()[:STEPS]:
    state, metrics = compiled(state, jax.device_put(b, training.batch_sharding))
    losses.append(float(metrics["loss"]))
    norms.append(float(metrics["grad_norm"]))
  return Run(training, compiled, compiled.as_text(), state, losses, norms)


# --- The same training whatever the layout ------------------------------------------------------

@pytest.mark.parametrize("name", list(RUNS))
def test_losses_match_the_unsharded_run(name):
  ref, run = _run("unsharded"), _run(name)
  # The gradient norm too: clipping and Adam's scale invariance would hide gradients summed twice.
  np.testing.assert_allclose(run.losses, ref.losses, rtol=0, atol=1e-5)
  np.testing.assert_allclose(run.grad_norms, ref.grad_norms, rtol=1e-5)
  assert ref.losses[-1] < ref.losses[0]  # it trains


@pytest.mark.parametrize("name", ["stage1", "tensor2_fsdp2_stage3_accum2"])
def test_state_lives_where_the_stage_says(name):
  run = _run(name)
  wq = run.state["params"]["blocks"]["attn"]["wq"]  # (layers, embed, heads, head_dim)
  mu_wq = run.state["opt_state"][1][0].mu["blocks"]["attn"]["wq"]
  if name == "stage1":
    assert wq.sharding.spec == jax.sharding.PartitionSpec(None, None, None, None)
    assert mu_wq.sharding.spec == jax.sharding.PartitionSpec(None, "data", None, None)
  else:
    expected = jax.sharding.PartitionSpec(None, ("data", "fsdp"), "tensor", None)
    assert wq.sharding.spec == expected and mu_wq.sharding.spec == expected


# --- The collectives in the compiled step ----------------------------------------------------------

_OP = re.compile(r"=\s+(\(.*?\)|\S+)\s+(all-reduce|reduce-scatter|all-gather)(?:-start)?\(")
_ARRAY = re.compile(r"([a-z]+\d*)\[([\d,]*)\]")


def _collectives(hlo: str) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
  """{op: [(dtype, shape) of every array it outputs]} from compiled HLO text."""
  out = {"all-reduce": [], "reduce-scatter": [], "all-gather": []}
  for m in _OP.finditer(hlo):
    for dtype, dims in _ARRAY.findall(m.group(1)):
      out[m.group(2)].append((dtype, tuple(int(d) for d in dims.split(",") if d)))
  return out


def _param_shapes(run: Run) -> set[tuple[int, ...]]:
  return {tuple(x.shape) for x in jax.tree.leaves(run.training.abstract_state["params"])}


def _per_layer(shape, variable) -> tuple[int, ...]:
  """The shape one layer uses: a stacked parameter's leading `layers` axis is the scan's."""
  stacked = rules_lib.logical_axes(variable)[:1] == ("layers",)
  return tuple(shape[1:] if stacked else shape)


def _variables(tree):
  return jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _layer_param_shapes(run: Run) -> set[tuple[int, ...]]:
  """Every parameter's shape as one layer uses it (stages 2 and 3 gather and reduce-scatter
  layer by layer, inside the scan over layers)."""
  return {_per_layer(v.shape, v) for v in _variables(run.training.abstract_state["params"])}


def _grad_shards(run: Run) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
  """(one layer's whole shape, shape of one device's slice of it) of every gradient, as the step
  lays them out."""
  params = run.training.abstract_state["params"]
  return [(_per_layer(v.shape, v), _per_layer(s.shard_shape(v.shape), v)) for v, s in
          zip(_variables(params), jax.tree.leaves(run.training.shardings.grads))]


@pytest.mark.parametrize("name", ["stage0", "stage1"])
def test_stages_0_and_1_all_reduce_whole_gradients(name):
  run = _run(name)
  ops = _collectives(run.hlo)
  assert _param_shapes(run) <= {shape for _, shape in ops["all-reduce"]}
  assert not ops["reduce-scatter"]


@pytest.mark.parametrize("name", ["stage2", "stage3"])
def test_stages_2_and_3_reduce_scatter_gradients_into_slices(name):
  run = _run(name)
  ops = _collectives(run.hlo)
  shards = _grad_shards(run)
  assert all(math.prod(part) * 8 == math.prod(whole) for whole, part in shards)  # split 8 ways
  assert {part for _, part in shards} <= {shape for _, shape in ops["reduce-scatter"]}
  # Only scalars (loss, token count, norms) are all-reduced: no gradient is ever whole.
  assert all(shape == () for _, shape in ops["all-reduce"]), ops["all-reduce"]


def test_stage_3_all_gathers_parameters_inside_the_step():
  run = _run("stage3")
  gathers = [line for line in run.hlo.splitlines() if re.search(r" all-gather(-start)?\(", line)]
  gathered = {shape for _, shape in _collectives(run.hlo)["all-gather"]}
  assert _layer_param_shapes(run) <= gathered
  # Gathered for the forward and backward passes (inside the data-parallel shard_map), not to
  # re-assemble updated parameters as in stages 1 and 2: those stay partitioned.
  assert all(re.search(r'op_name="[^"]*shard_map/[^"]*all_gather"', line) for line in gathers)
  # and gathered again in the backward pass rather than saved from the forward one
  assert any(re.search(r'op_name="[^"]*shard_map/transpose[^"]*all_gather"', line)
             for line in gathers)
  assert not _collectives(_run("stage0").hlo)["all-gather"]


# --- Bytes per device against the ZeRO formulas -----------------------------------------------------

@functools.lru_cache(maxsize=None)
def _real_gradients():
  """One step's gradients, computed on one device: laid out afterwards as each stage's step
  lays out its gradients."""
  ref = _run("unsharded").training

  @jax.jit
  def grads(params, batch_BxL1):
    return jax.grad(lambda p: step_lib.loss_sums(ref.graphdef, p, batch_BxL1, PAD_ID)[0])(params)

  return grads(_initial_state()["params"], jnp.asarray(_batches()[0]))


@pytest.mark.parametrize("stage", zero.STAGES)
def test_bytes_on_device_0_match_the_zero_formula(stage):
  run = _run(f"stage{stage}")
  device = jax.devices()[0]
  grads = jax.device_put(_real_gradients(), run.training.shardings.grads)
  measured = {
      "params": zero.bytes_on_device(run.state["params"], device),
      "grads": zero.bytes_on_device(grads, device),
      "opt_state": zero.bytes_on_device(run.state["opt_state"], device),
  }
  whole = zero.unpartitioned_bytes(run.training.abstract_state)
  assert whole["opt_state"] == pytest.approx(2 * whole["params"], rel=1e-3)  # Adam: m and v
  expected = zero.formula_bytes(stage, whole["params"], whole["grads"], whole["opt_state"], 8)
  for part in ("params", "grads", "opt_state"):
    assert measured[part] == pytest.approx(expected[part], rel=0.02), part
  assert sum(measured.values()) == pytest.approx(expected["total"], rel=0.02)


# --- Checkpoints move between meshes and stages ---------------------------------------------------

def test_checkpoint_from_one_mesh_restores_onto_another(tmp_path):
  source, target = _run("stage0"), _run("tensor2_fsdp2_stage3_accum2")
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), keep=1, every_steps=1)
  ckpt.save(STEPS, source.state, {"position": STEPS})
  step, restored, _ = ckpt.restore_latest(target.training.abstract_state)
  again = ckpt.restore_latest(source.training.abstract_state)[1]
  ckpt.close()
  assert step == STEPS
  for a, b, s in zip(jax.tree.leaves(source.state), jax.tree.leaves(restored),
                     jax.tree.leaves(target.training.shardings.state)):
    assert b.sharding == s
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The next step from the restored state is the step the source layout would have taken.
  batch = _batches()[STEPS]
  _, m_target = target.compiled(restored, jax.device_put(batch, target.training.batch_sharding))
  _, m_source = source.compiled(again, jax.device_put(batch, source.training.batch_sharding))
  assert float(m_target["loss"]) == pytest.approx(float(m_source["loss"]), abs=1e-5)

