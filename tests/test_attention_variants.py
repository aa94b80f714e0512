"""train/studies/attention_arms.py (experiments.attention_variants): the arms' equal parameter
counts and the memory budget."""

import numpy as np
import pytest

from experiments.configs import attention_variants as variants_cfg
from model.config import ModelConfig, count_params
from train.studies import attention_arms as study


@pytest.mark.parametrize("name", list(variants_cfg.VARIANTS))
def test_each_arm_has_the_mha_arms_parameters_to_within_one_d_ff_step(name):
  """Catches a d_ff solved with the wrong per-unit count (it would miss by a factor, not by
  at most one multiple-of-8 step) and an arm that keeps the base's attention."""
  config = variants_cfg.get_config()
  base = ModelConfig.from_dict(config.model.to_dict())
  cfg = study.equal_param_d_ff(base, variants_cfg.VARIANTS[name])
  target = count_params(base)["non_embedding"]
  step = 3 * cfg.d_model * cfg.n_layers * 8
  assert abs(count_params(cfg)["non_embedding"] - target) <= step / 2
  for key, value in variants_cfg.VARIANTS[name].items():
    assert getattr(cfg, key) == value


def test_largest_context_orders_the_variants_by_their_cache_per_token():
  """At the Llama-3-8B-like shape: MHA 512 KiB per token in bfloat16 (2 x 32 layers x 32 heads
  x 128 x 2 bytes), GQA a quarter, MQA 1/32, MLA (512 + 64) x 32 layers x 2 bytes; a sliding
  window's ring fits any context."""
  got = {n: study.largest_context(study.large_shape(n), 64e9, np.dtype("bfloat16"))
         for n in study.LARGE_VARIANTS}
  assert got["mha"]["bytes_per_token"] == 2 * 32 * 32 * 128 * 2
  assert got["gqa"]["bytes_per_token"] * 4 == got["mha"]["bytes_per_token"]
  assert got["mqa"]["bytes_per_token"] * 32 == got["mha"]["bytes_per_token"]
  assert got["mla"]["bytes_per_token"] == (512 + 64) * 32 * 2
  assert got["mha"]["largest_context"] == int(64e9 // (2 * 32 * 32 * 128 * 2))
  assert (got["mha"]["largest_context"] < got["gqa"]["largest_context"]
          < got["mla"]["largest_context"] < got["mqa"]["largest_context"])
  assert got["swa"]["largest_context"] == "unbounded"
