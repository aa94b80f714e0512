"""The mesh, the rules tables and the checks that reject a run before anything compiles."""

import jax
import pytest
from jax.sharding import PartitionSpec

from sharding import mesh as mesh_lib
from sharding import rules as rules_lib
from sharding import validate, zero
from sharding.mesh import MeshError
from tests.helpers import tiny_config
from train import pretrain


def _one_line(excinfo) -> str:
  message = str(excinfo.value)
  assert "\n" not in message
  return message


# --- The mesh -------------------------------------------------------------------------------------

def test_minus_one_takes_the_remaining_devices():
  mesh = mesh_lib.make_mesh({"data": -1, "tensor": 2})
  assert dict(mesh.shape) == {"data": 4, "fsdp": 1, "tensor": 2, "expert": 1}
  assert mesh_lib.data_parallel_size(mesh) == 4


def test_mesh_product_other_than_the_device_count_is_rejected():
  with pytest.raises(MeshError) as e:
    mesh_lib.make_mesh({"data": 3, "tensor": 2})
  assert "has 6 devices but 8 are present" in _one_line(e)


# --- Rules tables ---------------------------------------------------------------------------------

def test_earlier_table_entries_claim_mesh_axes_first():
  mesh = mesh_lib.make_mesh({"data": 2, "expert": 4})
  rules = {"experts": "expert", "embed": ("data", "expert")}
  # embed comes first in the array but second in the table: it gets only what is left.
  assert rules_lib.spec_for(("embed", "experts"), (8, 8), rules, mesh) == PartitionSpec("data", "expert")


def test_a_dimension_the_mesh_axes_do_not_divide_stays_whole():
  mesh = mesh_lib.make_mesh({"data": 8})
  assert rules_lib.spec_for(("vocab", "embed"), (300, 12), zero.PARTITIONED, mesh) == PartitionSpec(None, None)


def test_zero_stages_differ_only_in_which_parts_are_partitioned():
  mesh = mesh_lib.make_mesh({"data": 4, "tensor": 2})
  whole = rules_lib.spec_for(("embed", "heads", "head_dim"), (32, 4, 8), zero.WHOLE, mesh)
  split = rules_lib.spec_for(("embed", "heads", "head_dim"), (32, 4, 8), zero.PARTITIONED, mesh)
  assert whole == PartitionSpec(None, "tensor", None)
  assert split == PartitionSpec("data", "tensor", None)
  parts = [(lay.params, lay.grads, lay.opt_state) for lay in (zero.layout(s) for s in zero.STAGES)]
  p, w = zero.PARTITIONED, zero.WHOLE
  assert parts == [(w, w, w), (w, w, p), (w, p, p), (p, p, p)]


def test_formula_reproduces_the_papers_7_5b_example():
  """Rajbhandari et al.: 7.5B parameters, mixed-precision Adam, 64 devices."""
  psi = 7.5e9
  gb = [zero.formula_bytes(s, 2 * psi, 2 * psi, 12 * psi, 64)["total"] / 1e9 for s in zero.STAGES]
  assert gb == pytest.approx([120, 31.4, 16.6, 1.875], abs=0.05)


# --- Checks before anything compiles: each error names its setting, in one line -------------------

@pytest.mark.parametrize("field, kwargs", [
    ("n_heads", dict(n_heads=6, n_kv_heads=2, d_ff=64)),
    ("n_kv_heads", dict(n_heads=8, n_kv_heads=2, d_ff=64)),
    ("d_ff", dict(n_heads=8, n_kv_heads=4, d_ff=66)),
])
def test_tensor_size_must_divide_heads_kv_heads_and_d_ff(field, kwargs):
  with pytest.raises(MeshError) as e:
    validate.check_tensor(tensor=4, **kwargs)
  assert f"model.{field}=" in _one_line(e) and "tensor-parallel size" in str(e.value)


def test_expert_size_must_divide_the_experts():
  validate.check_experts(8, 4)
  with pytest.raises(MeshError) as e:
    validate.check_experts(6, 4)
  assert "model.n_experts=6 must be divisible by the expert-parallel size" in _one_line(e)


def test_batch_must_divide_over_the_data_parallel_devices():
  with pytest.raises(MeshError) as e:
    validate.check_batch(12, 8, 1)
  assert "train.batch_size=12 must be divisible by the data-parallel size (8)" in _one_line(e)


@pytest.mark.parametrize("overrides, needle", [
    ({"sharding.mesh": {"data": 3}}, "has 3 devices but 8 are present"),
    ({"train.batch_size": 12}, "train.batch_size=12 must be divisible by the data-parallel size"),
    ({"sharding.mesh": {"data": 2, "tensor": 4}}, "model.n_kv_heads=2 must be divisible by the tensor-parallel"),
    ({"sharding.zero_stage": 4}, "sharding.zero_stage=4 is unknown"),
    ({"sharding.zero_stage": 3, "model.d_model": 36, "model.n_heads": 2, "model.n_kv_heads": 2},
     "must divide model.d_model=36"),
])
def test_train_rejects_a_bad_layout_before_touching_the_workdir(tmp_path, overrides, needle):
  wd = tmp_path / "run"
  with pytest.raises(ValueError) as e:
    pretrain.train(tiny_config("unused", **overrides), str(wd))
  assert needle in _one_line(e)
  assert not wd.exists()  # nothing prepared, nothing compiled
  assert len(jax.devices()) == 8
