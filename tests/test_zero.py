"""ZeRO stages and tensor parallelism on 8 CPU devices: the same training as one device, the
collectives the compiled step really contains and where they sit, and the memory the compiled step
really needs per device.

Each configuration is compiled once and shared by every claim about it (runs are cached by name).
That a run moves between stages and meshes through the training loop itself is shown in
tests/test_multihost.py, where a 2-process checkpoint resumes in one process under another stage.
"""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.config import ModelConfig
from sharding import memory as memory_lib
from sharding import mesh as mesh_lib
from sharding import zero
from tests.helpers import tiny_config
from train import checkpoint as ckpt_lib
from train import state as state_lib
from train.config import TrainSettings

STEPS = 5
# Small, but with a train state that outweighs its activations (as in the models ZeRO is for), so
# the compiled step's peak memory shows what each stage partitions.
CONFIG = tiny_config("", **{
    "train.steps": STEPS, "train.lr": 3e-3, "model.d_model": 128, "model.n_layers": 8,
    "model.d_ff": 512, "data.seq_len": 16, "data.vocab_size": 512})
MODEL = ModelConfig.from_dict(CONFIG.model.to_dict())
B, L1 = CONFIG.train.batch_size, CONFIG.data.seq_len + 1
PAD_ID = 0

# name: (mesh, zero_stage, grad_accum)
RUNS = {
    "stage0": ({"data": 8}, 0, 1),
    "stage1": ({"data": 8}, 1, 1),
    "stage2": ({"data": 8}, 2, 1),
    "stage3": ({"data": 8}, 3, 1),
    # Every stage on a mesh of all three dense axes (the expert axis: tests/test_moe.py).
    "tensor2_fsdp2_stage0": ({"data": 2, "fsdp": 2, "tensor": 2}, 0, 1),
    "tensor2_fsdp2_stage1": ({"data": 2, "fsdp": 2, "tensor": 2}, 1, 1),
    "tensor2_fsdp2_stage2_accum2": ({"data": 2, "fsdp": 2, "tensor": 2}, 2, 2),
    "tensor2_fsdp2_stage3_accum2": ({"data": 2, "fsdp": 2, "tensor": 2}, 3, 2),
}


@functools.lru_cache(maxsize=None)
def _batches(n=STEPS + 1):
  """Rows that count up from random starts (learnable in a few steps), a few of them padded;
  the same for every run."""
  out = []
  rng = np.random.default_rng(0)
  for i in range(n):
    b = ((rng.integers(1, MODEL.vocab_size, (B, 1)) + np.arange(L1)) % MODEL.vocab_size).astype(np.int32)
    b[i % B, -4:] = PAD_ID
    out.append(b)
  return out


@dataclasses.dataclass
class Run:
  training: state_lib.ShardedTraining
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
  training = state_lib.make_sharded_training(
      MODEL, TrainSettings.from_config(CONFIG.train), mesh, 0, pad_id=PAD_ID)
  return jax.device_get(training.init(jax.random.key(0)))


@functools.lru_cache(maxsize=None)
def _run(name: str) -> Run:
  if name == "unsharded":
    mesh, stage, accum = mesh_lib.make_mesh({"data": 1}, devices=jax.devices()[:1]), 0, 1
  else:
    spec, stage, accum = RUNS[name]
    mesh = mesh_lib.make_mesh(spec)
  t = dataclasses.replace(TrainSettings.from_config(CONFIG.train), grad_accum=accum)
  training = state_lib.make_sharded_training(MODEL, t, mesh, stage, pad_id=PAD_ID)
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

_OP = re.compile(
    r"=\s+(\(.*?\)|\S+)\s+(all-reduce|reduce-scatter|all-gather|all-to-all)(?:-start)?\(")
_ARRAY = re.compile(r"([a-z]+\d*)\[([\d,]*)\]")


def _collectives(hlo: str) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
  """{op: [(dtype, shape) of every array it outputs]} from compiled HLO text."""
  out = {"all-reduce": [], "reduce-scatter": [], "all-gather": [], "all-to-all": []}
  for m in _OP.finditer(hlo):
    for dtype, dims in _ARRAY.findall(m.group(1)):
      out[m.group(2)].append((dtype, tuple(int(d) for d in dims.split(",") if d)))
  return out


def _param_shapes(run: Run) -> set[tuple[int, ...]]:
  return {tuple(x.shape) for x in jax.tree.leaves(run.training.abstract_state["params"])}


@pytest.mark.parametrize("name", ["stage0", "stage1"])
def test_stages_0_and_1_all_reduce_whole_gradients(name):
  run = _run(name)
  ops = _collectives(run.hlo)
  assert _param_shapes(run) <= {shape for _, shape in ops["all-reduce"]}
  assert not ops["reduce-scatter"]


_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) [^\n]*\{$", re.M)
_CALLED = re.compile(r"(?:body|condition|calls|to_apply|branch_computations)=\{?%?([\w.\-, %]+)\}?")


def _loop_computations(hlo: str) -> dict[str, str]:
  """{name: text} of every computation that runs inside a while loop: the loops' bodies and
  everything they call."""
  starts = [(m.start(), m.group(1)) for m in _COMPUTATION.finditer(hlo)]
  comps = {name: hlo[pos:(starts[i + 1][0] if i + 1 < len(starts) else len(hlo))]
           for i, (pos, name) in enumerate(starts)}
  todo = [b for text in comps.values() for b in re.findall(r"body=%?([\w.\-]+)", text)]
  inside = {}
  while todo:
    name = todo.pop()
    if name in inside or name not in comps:
      continue
    inside[name] = comps[name]
    for group in _CALLED.findall(comps[name]):
      todo += [c.strip().lstrip("%") for c in group.split(",")]
  return inside


def _block_shapes(run: Run, sharding=None) -> list[tuple[int, ...]]:
  """One layer's shape of every stacked block parameter: whole, or this device's slice."""
  blocks = run.training.abstract_state["params"]["blocks"]
  if sharding is None:
    return [tuple(x.shape[1:]) for x in jax.tree.leaves(blocks)]
  shards = jax.tree.leaves(sharding["blocks"])
  return [tuple(s.shard_shape(x.shape)[1:]) for x, s in zip(jax.tree.leaves(blocks), shards)]


@pytest.mark.parametrize("name", ["stage2", "stage3"])
def test_stages_2_and_3_reduce_scatter_each_layer_inside_the_backward_loop(name):
  """Catches: the gradient reduced after the backward pass (whole on every device first), which
  is what stage 2 did before it tapped each layer."""
  run = _run(name)
  in_loop = "".join(_loop_computations(run.hlo).values())
  scattered = {shape for _, shape in _collectives(in_loop)["reduce-scatter"]}
  assert set(_block_shapes(run, run.training.shardings.grads)) <= scattered
  # Only scalars (loss, token count, norms) are all-reduced: no gradient is ever whole.
  assert all(shape == () for _, shape in _collectives(run.hlo)["all-reduce"])


def test_stage_3_gathers_one_layer_at_a_time_inside_the_layer_loop():
  """Catches: a whole-model gather before the forward pass (every layer's parameters whole at
  once), which is what stage 3 did before."""
  run = _run("stage3")
  stacked = {tuple(x.shape) for x in jax.tree.leaves(run.training.abstract_state["params"]["blocks"])}
  gathered_anywhere = {shape for _, shape in _collectives(run.hlo)["all-gather"]}
  in_loop = "".join(_loop_computations(run.hlo).values())
  gathered_in_loop = {shape for _, shape in _collectives(in_loop)["all-gather"]}
  assert set(_block_shapes(run)) <= gathered_in_loop  # each layer, whole, where it is used
  assert not stacked & gathered_anywhere  # never all layers at once
  assert not _collectives(_run("stage0").hlo)["all-gather"]


# --- Memory: the compiled step, per device ---------------------------------------------------------

def test_each_stage_lowers_the_compiled_steps_peak_memory():
  """The ZeRO promise, read from XLA's account of the compiled step (arguments + outputs +
  temporaries - donated): each stage needs strictly less per device than the one below, and
  stage 3 at most a quarter of stage 0 on 8 devices. Catches: a stage whose step rebuilds
  what its layout partitions (whole gradients at stage 2, whole parameters at stage 3)."""
  peak = [memory_lib.step_bytes(_run(f"stage{s}").compiled) for s in zero.STAGES]
  assert peak[0] > peak[1] > peak[2] > peak[3], peak
  assert peak[3] <= 0.25 * peak[0], peak


@pytest.mark.parametrize("stage", zero.STAGES)
def test_train_state_bytes_on_device_0_match_the_zero_formula(stage):
  """The state the compiled step returns, as laid out on device 0: parameters and optimizer
  state per the ZeRO table. Catches: a layout rule that leaves a part whole (or splits it) against
  the stage's row."""
  run = _run(f"stage{stage}")
  device = jax.devices()[0]
  whole = zero.unpartitioned_bytes(run.training.abstract_state)
  assert whole["opt_state"] == pytest.approx(2 * whole["params"], rel=1e-3)  # Adam: m and v
  expected = zero.formula_bytes(stage, whole["params"], whole["grads"], whole["opt_state"], 8)
  for part in ("params", "opt_state"):
    measured = zero.bytes_on_device(run.state[part], device)
    assert measured == pytest.approx(expected[part], rel=0.02), part


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



def test_a_stage_3_run_is_restored_and_sampled_in_its_own_layout(tmp_path):
  """load_params (generation, evaluation) restores a ZeRO-3 run's parameters partitioned as the
  run stored them, and greedy decoding from them makes the tokens that the same parameters make
  on one device. Catches: a restore that needs the whole model on one device, or a sharded
  decode that computes something else."""
  from model import generation, sampling

  run = _run("stage3")
  config = CONFIG.copy_and_resolve_references()
  config.sharding.mesh = dict(RUNS["stage3"][0])
  config.sharding.zero_stage = 3
  (tmp_path / "config.json").write_text(config.to_json())
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), keep=1, every_steps=1)
  ckpt.save(STEPS, run.state, {})
  ckpt.close()
  cfg, graphdef, params = ckpt_lib.load_params(str(tmp_path))
  wq = params["blocks"]["attn"]["wq"]
  assert wq.sharding.spec == run.state["params"]["blocks"]["attn"]["wq"].sharding.spec
  assert wq.addressable_shards[0].data.shape[1] == cfg.d_model // 8
  spec = generation.DecodeSpec(6, -1, sampling.SamplingConfig(temperature=0.0))
  generate = generation.make_generate(cfg, graphdef, spec)
  prompts, lengths, keys = jnp.asarray(_batches()[0][:2, :5]), jnp.array([5, 3]), jax.random.split(
      jax.random.key(0), 2)
  sharded = generation.trim(generate(params, prompts, lengths, keys))
  single = generation.trim(generate(jax.device_put(jax.device_get(params), jax.devices()[0]),
                                prompts, lengths, keys))
  assert sharded == single
