"""Mixture of Experts: dispatch styles agree with a loop over experts; routing losses behave."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import moe
from train.config import TrainSettings

N, D, E, F, K = 24, 8, 4, 16, 2


def _weights(seed=0, e=E):
  ks = jax.random.split(jax.random.key(seed), 5)
  x = jax.random.normal(ks[0], (N, D))
  w_router = jax.random.normal(ks[1], (D, e))
  w_gate = jax.random.normal(ks[2], (e, D, F)) * 0.3
  w_up = jax.random.normal(ks[3], (e, D, F)) * 0.3
  w_down = jax.random.normal(ks[4], (e, F, D)) * 0.3
  return x, w_router, w_gate, w_up, w_down


def _layer(dispatch, capacity_factor=1.25, k=K):
  return moe.MoEConfig(n_experts=E, top_k=k, dispatch=dispatch, capacity_factor=capacity_factor)


def test_router_weights_are_renormalised_top_k():
  x, w_router, *_ = _weights()
  r = moe.route(x, w_router, K)
  np.testing.assert_allclose(r.weight_NxK.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(r.expert_NxK[:, 0], jnp.argmax(r.probs_NxE, -1))
  # Renormalised top-k probabilities equal a softmax over the top-k logits.
  top_logits = jnp.take_along_axis(r.logits_NxE, r.expert_NxK, axis=-1)
  np.testing.assert_allclose(r.weight_NxK, jax.nn.softmax(top_logits, -1), rtol=1e-5)


def test_top_1_gates_by_the_probability_so_the_loss_trains_the_router():
  """Catches: top-1 weights renormalised to 1 (the router then gets no gradient from the loss,
  only from the auxiliary losses, and top-1 MoE cannot learn where to send tokens)."""
  x, w_router, w_gate, w_up, w_down = _weights()
  r = moe.route(x, w_router, 1)
  np.testing.assert_allclose(r.weight_NxK[:, 0], jnp.max(r.probs_NxE, -1), rtol=1e-6)
  cfg = _layer("dropless", k=1)
  g = jax.grad(lambda w: jnp.sum(moe.moe_ffn(x, w, w_gate, w_up, w_down, cfg)[0] ** 2))(w_router)
  assert float(jnp.max(jnp.abs(g))) > 1e-4


def swiglu(x_MxD, w_gate_DxF, w_up_DxF, w_down_FxD):
  """One expert's FFN on every row: the dense SwiGLU the dispatch styles must reproduce."""
  return (jax.nn.silu(x_MxD @ w_gate_DxF) * (x_MxD @ w_up_DxF)) @ w_down_FxD


def reference_moe(x_NxD, r: moe.Routing, w_gate_ExDxF, w_up_ExDxF, w_down_ExFxD) -> jax.Array:
  """Every expert on every token, masked by the routing: slow, obviously right; the test oracle."""
  out = jnp.zeros(x_NxD.shape, jnp.float32)
  for e in range(w_gate_ExDxF.shape[0]):
    gate_N = jnp.sum(jnp.where(r.expert_NxK == e, r.weight_NxK, 0.0), axis=-1)
    y = swiglu(x_NxD, w_gate_ExDxF[e], w_up_ExDxF[e], w_down_ExFxD[e])
    out = out + gate_N[:, None] * y.astype(jnp.float32)
  return out.astype(x_NxD.dtype)


def test_dropless_equals_loop_over_experts_in_outputs_and_gradients():
  x, w_router, w_gate, w_up, w_down = _weights()

  def loss(fn, x, wg, wu, wd):
    r = moe.route(x, w_router, K)
    return jnp.sum(fn(x, r, wg, wu, wd) ** 2)

  args = (x, w_gate, w_up, w_down)
  r = moe.route(x, w_router, K)
  np.testing.assert_allclose(moe.dropless_moe(x, r, *args[1:]), reference_moe(x, r, *args[1:]),
                             atol=1e-5)
  g_fast = jax.grad(lambda *a: loss(moe.dropless_moe, *a), argnums=(0, 1, 2, 3))(*args)
  g_ref = jax.grad(lambda *a: loss(reference_moe, *a), argnums=(0, 1, 2, 3))(*args)
  for a, b in zip(g_fast, g_ref):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_capacity_dispatch_with_room_for_all_equals_dropless():
  x, w_router, w_gate, w_up, w_down = _weights()
  r = moe.route(x, w_router, K)
  out, drop = moe.capacity_moe(x, r, w_gate, w_up, w_down, capacity_factor=float(E))
  assert float(drop) == 0.0
  np.testing.assert_allclose(out, moe.dropless_moe(x, r, w_gate, w_up, w_down), atol=1e-5)


def test_small_capacity_drops_overflow_and_reports_it():
  x, w_router, w_gate, w_up, w_down = _weights()
  probs = jnp.full((N, E), 0.1).at[:, 0].set(0.7)  # every token prefers expert 0
  r = moe.Routing(jnp.zeros((N, 1), jnp.int32), jnp.ones((N, 1)), probs, jnp.log(probs))
  out, drop = moe.capacity_moe(x, r, w_gate, w_up, w_down, capacity_factor=1.0)
  c = moe.capacity(N, 1, E, 1.0)
  assert float(drop) == pytest.approx(1 - c / N)
  # Tokens past the capacity of expert 0 get zero output (the residual carries them).
  np.testing.assert_array_equal(out[c:], 0.0)
  assert np.abs(out[:c]).min() > 0


def test_one_expert_top_1_equals_dense_swiglu():
  x, w_router, w_gate, w_up, w_down = _weights(e=1)
  for dispatch in moe.DISPATCHES:
    cfg = moe.MoEConfig(n_experts=1, top_k=1, dispatch=dispatch, capacity_factor=1.0)
    out, stats = moe.moe_ffn(x, w_router, w_gate, w_up, w_down, cfg)
    np.testing.assert_allclose(out, swiglu(x, w_gate[0], w_up[0], w_down[0]), atol=1e-5)
    assert float(stats.drop_fraction) == 0.0


def test_load_balance_loss_is_one_for_uniform_routing():
  e, n = 4, 64
  uniform = moe.Routing(
      expert_NxK=(jnp.arange(n) % e)[:, None].astype(jnp.int32), weight_NxK=jnp.ones((n, 1)),
      probs_NxE=jnp.full((n, e), 1 / e), logits_NxE=jnp.zeros((n, e)))
  assert float(moe.load_balance_loss(uniform)) == pytest.approx(1.0)


def test_load_balance_loss_by_hand_can_be_below_one():
  """E sum_i f_i P_i with f = (2/3, 1/3) and P = (1.02/3, 1.98/3): 2 * 4.02 / 9, below 1.

  The loss is 1 at uniform routing but not bounded below by 1 (the assignments need not favour
  the experts of highest mean probability). Catches: the factor E dropped, f or P averaged
  wrongly, and a test that assumes loss >= 1."""
  probs = jnp.array([[0.51, 0.49], [0.51, 0.49], [0.0, 1.0]])
  r = moe.Routing(jnp.array([[0], [0], [1]], jnp.int32), jnp.ones((3, 1)), probs, jnp.log(probs))
  assert float(moe.load_balance_loss(r)) == pytest.approx(2 * 4.02 / 9, rel=1e-6)


def test_layer_stats_carry_the_load_balance_loss_and_z_loss_of_its_routing():
  """Catches: the statistics the train step reads (router_stats) computing the losses apart from,
  and differently to, load_balance_loss and z_loss (e.g. without the factor E)."""
  x, w_router, *_ = _weights(seed=3)
  r = moe.route(x, w_router, K)
  stats = moe.router_stats(r, jnp.zeros(()))
  assert float(stats.load_balance_loss) == pytest.approx(float(moe.load_balance_loss(r)), rel=1e-6)
  assert float(stats.z_loss) == pytest.approx(float(moe.z_loss(r)), rel=1e-6)


def test_capacity_priority_first_choices_before_second_choices():
  """top_k = 2, two experts, room for 2 tokens each: all four first choices are kept, every
  second choice is dropped, even though tokens 0 and 1 come first.

  Catches: token-major priority (token 0's two choices, then token 1's, ...), which would keep
  both choices of tokens 0 and 1 and drop the first choices of tokens 2 and 3."""
  expert_NxK = jnp.array([[1, 0], [1, 0], [0, 1], [0, 1]], jnp.int32)
  r = moe.Routing(expert_NxK, jnp.full((4, 2), 0.5), jnp.full((4, 2), 0.5), jnp.zeros((4, 2)))
  s = moe.assign_slots(r, n_experts=2, c=2)
  kept = {(int(t), int(e)) for t, e, k in zip(s.token_A, s.expert_A, s.kept_A) if k}
  assert kept == {(0, 1), (1, 1), (2, 0), (3, 0)}
  assert int(jnp.sum(s.kept_A)) == 4


def test_z_loss_is_mean_squared_logsumexp():
  logits = jnp.array([[0.0, 0.0], [1.0, 3.0]])
  r = moe.Routing(jnp.zeros((2, 1), jnp.int32), jnp.ones((2, 1)), jax.nn.softmax(logits), logits)
  expected = np.mean([np.log(2.0) ** 2, np.log(np.exp(1) + np.exp(3)) ** 2])
  assert float(moe.z_loss(r)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(n_experts=4, top_k=5), "model.moe.top_k=5 must be between 1 and model.moe.n_experts=4"),
    (dict(n_experts=4, dispatch="capacity", capacity_factor=0.0), "model.moe.capacity_factor=0.0 must be > 0"),
    (dict(n_experts=4, dispatch="magic"), "model.moe.dispatch='magic' is unknown"),
    (dict(n_experts=-1), "model.moe.n_experts must be >= 0"),
])
def test_bad_moe_config_is_one_line_error(kwargs, needle):
  with pytest.raises(ValueError, match=needle):
    moe.MoEConfig(**kwargs)


def test_moe_model_counts_total_and_active_parameters():
  from model import transformer
  from model.config import ModelConfig, count_params

  for scan, every in ((True, 1), (False, 2)):
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                      scan_layers=scan, moe=moe.MoEConfig(n_experts=4, top_k=2, every=every))
    graphdef, params = transformer.create(cfg, jax.random.key(0))
    counts = count_params(cfg)
    assert sum(x.size for x in jax.tree.leaves(params)) == counts["total"]
    expert = 3 * 32 * 64
    assert counts["non_embedding"] - counts["active_non_embedding"] == cfg.n_moe_layers * 2 * expert
    logits, stats = transformer.apply_with_aux(graphdef, params, jnp.ones((2, 8), jnp.int32))
    assert logits.shape == (2, 8, 64)
    assert stats.expert_share_E.shape == (cfg.n_moe_layers, 4)
    np.testing.assert_allclose(stats.expert_share_E.sum(-1), 1.0, rtol=1e-6)


def test_mixing_dense_and_moe_layers_needs_unrolled_layers():
  from model.config import ModelConfig

  with pytest.raises(ValueError, match="model.moe.every=2 mixes dense and MoE layers: set model.scan_layers=False"):
    ModelConfig(n_layers=4, moe=moe.MoEConfig(n_experts=4, every=2))


def test_moe_training_on_an_expert_mesh_logs_router_metrics(tmp_path, tiny_corpus):
  """The training loop on expert = 4 of 8 devices (experts stored split over the expert axis)
  logs the router losses, drop fraction and expert shares; trained at capacity 0.5, it drops, and
  evaluation (dropless, model.moe.eval_dispatch's default) drops nothing, while the test rows
  scored with training's dispatch drop again (the ablation). (That the expert mesh trains as one
  device does: test_expert_parallel_training_matches_one_device below.) Catches: metrics of an
  MoE run not reaching metrics.jsonl, shares that do not sum to one, experts stored whole,
  evaluation running training's dispatch or logging no drop fraction."""
  from tests.helpers import tiny_config
  from train import config as config_lib
  from train import metrics as metrics_lib
  from train import pretrain

  moe_overrides = {"model.moe.n_experts": 4, "model.moe.top_k": 2, "train.steps": 3,
                   "model.moe.dispatch": "capacity", "model.moe.capacity_factor": 0.5,
                   "checkpoint.every_steps": 3, "train.eval_every": 3, "train.test_batches": 1}
  import jax
  sharded = tiny_config(tiny_corpus, **moe_overrides, **{"sharding.mesh": {"data": 2, "expert": 4}})
  pretrain.train(sharded, str(tmp_path / "ep"))
  b = metrics_lib.read_jsonl(str(tmp_path / "ep" / "metrics.jsonl"))
  assert [r["step"] for r in b if "loss" in r] == [1, 2, 3]
  last = b[-1]
  assert 0.0 < last["moe/load_balance_loss"] <= 4.0  # E sum f_i P_i lies in (0, E]; not >= 1
  assert sum(last[f"moe/expert_share/{i}"] for i in range(4)) == pytest.approx(1.0, abs=1e-5)
  assert last["moe/drop_fraction"] > 0.2  # capacity 0.5 holds about half the assignments
  assert last["eval/moe/drop_fraction"] == 0.0 and last["test/moe/drop_fraction"] == 0.0
  assert sum(last[f"eval/moe/expert_share/{i}"] for i in range(4)) == pytest.approx(1.0, abs=1e-5)
  assert last["test_train_dispatch/moe/drop_fraction"] > 0.2
  assert np.isfinite(last["test_train_dispatch_loss"]) and np.isfinite(last["test_loss"])
  assert jax.device_count() == 8
  from model import transformer
  from sharding import mesh as mesh_lib
  from sharding import rules

  _, abstract = transformer.abstract(config_lib.validate(sharded))
  shardings = rules.param_shardings(abstract, mesh_lib.make_mesh(sharded.sharding.mesh),
                                    rules.TENSOR_PARALLEL)
  assert shardings["blocks"]["mlp"]["w_gate"].get_value().spec[1] == "expert"


# --- Expert parallelism: tokens travel to their experts by all-to-all -------------------------------

EP_STEPS = 5


def _ep_model(dispatch: str):
  """The tiny model with 4 experts, top 2. capacity_factor = E / k gives every expert room for
  all of a device's tokens, so capacity dispatch drops nothing on any mesh and matches one
  device (with drops, each device's tokens compete for their own slots, as under plain data
  parallelism)."""
  from model.config import ModelConfig
  from tests.helpers import tiny_config

  config = tiny_config("", **{"train.steps": EP_STEPS, "data.seq_len": 8})
  d = config.model.to_dict()
  d["moe"] = dict(n_experts=E, top_k=K, dispatch=dispatch, capacity_factor=E / K)
  return config, ModelConfig.from_dict(d)


# name: (mesh, zero stage, dispatch). Dispatch only decides the buffer's capacity, the same code
# at every stage, so the two dispatches take turns over the stages rather than doubling the
# compiles (each costs seconds on the test machine); stage 3 runs with tensor parallelism too.
EP_RUNS = {
    "capacity_stage0": ({"data": 2, "expert": 4}, 0, "capacity"),
    "dropless_stage1": ({"data": 2, "expert": 4}, 1, "dropless"),
    "capacity_stage2": ({"data": 2, "expert": 4}, 2, "capacity"),
    "dropless_tensor2_stage3": ({"data": 2, "expert": 2, "tensor": 2}, 3, "dropless"),
}


@functools.lru_cache(maxsize=None)
def _ep_batches():
  config, model = _ep_model("dropless")
  shape = (config.train.batch_size, config.data.seq_len + 1)
  return [np.array(jax.random.randint(jax.random.key(i), shape, 1, model.vocab_size), np.int32)
          for i in range(EP_STEPS)]


@functools.lru_cache(maxsize=None)
def _ep_initial_state():
  """One initial state on the host for every run (the parameters do not depend on dispatch)."""
  return jax.device_get(_ep_training("one_device")[0].init(jax.random.key(0)))


@functools.lru_cache(maxsize=None)
def _ep_training(name: str):
  """(training, compiled train step); "one_device" is the reference (dropless: with room for
  every token, capacity dispatch computes the same)."""
  from sharding import mesh as mesh_lib
  from train import state as state_lib

  if name == "one_device":
    spec, stage, dispatch = {"data": 1}, 0, "dropless"
    mesh = mesh_lib.make_mesh(spec, devices=jax.devices()[:1])
  else:
    spec, stage, dispatch = EP_RUNS[name]
    mesh = mesh_lib.make_mesh(spec)
  config, model = _ep_model(dispatch)
  training = state_lib.make_sharded_training(
      model, TrainSettings.from_config(config.train), mesh, stage, pad_id=0)
  batch = _ep_batches()[0]
  struct = jax.ShapeDtypeStruct(batch.shape, jnp.int32, sharding=training.batch_sharding)
  return training, training.train_step.lower(training.abstract_state, struct).compile()


@functools.lru_cache(maxsize=None)
def _ep_run(name: str):
  """(training, compiled HLO text, per-step metrics) of EP_STEPS steps."""
  training, compiled = _ep_training(name)
  state = jax.device_put(_ep_initial_state(), training.shardings.state)
  metrics = []
  for b in _ep_batches():
    state, m = compiled(state, jax.device_put(b, training.batch_sharding))
    metrics.append({k: np.asarray(v) for k, v in m.items()})
  return training, compiled.as_text(), metrics


@pytest.mark.parametrize("name", list(EP_RUNS))
def test_expert_parallel_training_matches_one_device(name):
  """Loss, gradient norm and router statistics of 5 float32 steps equal the one-device run.

  Catches: tokens sent to the wrong device or expert (block order of the all-to-all against the
  order the expert weights are stored in), expert gradients summed over the expert axis or not
  summed over the data axis (the gradient norm, and the losses after step 1), router statistics
  averaged per device instead of over all tokens (the load-balancing loss is not linear in them).
  """
  ref, run = _ep_run("one_device")[2], _ep_run(name)[2]
  for key in ("loss", "grad_norm", "moe/load_balance_loss", "moe/z_loss"):
    np.testing.assert_allclose([m[key] for m in run], [m[key] for m in ref], rtol=1e-5, atol=1e-5,
                               err_msg=key)
  np.testing.assert_allclose([m["moe/expert_share"] for m in run],
                             [m["moe/expert_share"] for m in ref], atol=1e-6)
  assert all(float(m["moe/drop_fraction"]) == 0.0 for m in run)


@pytest.mark.parametrize("name", list(EP_RUNS))
def test_expert_parallel_step_exchanges_tokens_and_never_gathers_experts(name):
  """The compiled step has all-to-alls and no all-gather whose output holds an expert weight
  with all of its experts (whatever other dimension is split, over data or tensor).

  Catches: expert weights gathered whole inside each layer (the use() hook gathering over the
  expert axis, as before expert parallelism), or an exchange that XLA never emits.
  """
  from tests.test_zero import _collectives

  training, hlo, _ = _ep_run(name)
  ops = _collectives(hlo)
  assert ops["all-to-all"], "no all-to-all in the step"
  # Every (L, E, X, Y) expert weight as it would come out of a gather over the expert axis: the
  # experts all there, X and Y whole or split as one of the step's layouts splits them.
  forbidden = set()
  for layout in (training.shardings.params, training.shardings.grads, training.shardings.updates):
    mlp, stored = layout["blocks"]["mlp"], training.abstract_state["params"]["blocks"]["mlp"]
    for w in ("w_gate", "w_up", "w_down"):
      layers, e, x, y = stored[w].shape
      _, _, x_s, y_s = mlp[w].get_value().shard_shape(stored[w].shape)
      for xx in {x, x_s}:
        for yy in {y, y_s}:
          forbidden |= {(e, xx, yy), (layers, e, xx, yy)}
  bad = [shape for _, shape in ops["all-gather"] if shape in forbidden]
  assert not bad, f"expert weights gathered whole over the expert axis: {bad}"
