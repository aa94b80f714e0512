"""model/interop and train/hf_workdir.py (experiments.convert): Hugging Face Llama and Mixtral
in and out of llmlab.

The reference is transformers itself: tiny random models are built with it, saved, imported, and
llmlab's float32 logits must equal transformers' on the same tokens within 1e-4; exported back,
transformers must load them and give the same logits, from the very same tensors.
"""

import json
import os
import pathlib
import shutil

import numpy as np
import pytest

_NEED = "the interop extra is not installed (pip install -e '.[interop]': torch, transformers)"
torch = pytest.importorskip("torch", reason=_NEED)
transformers = pytest.importorskip("transformers", reason=_NEED)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from model import interop, transformer  # noqa: E402
from model.interop import hf_config, hf_tokenizer, safetensors_io  # noqa: E402
from tests import helpers  # noqa: E402

TOL = 1e-4
LLAMA = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=500.0)
VARIANTS = {
    "mha_untied": dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False),
    "gqa_tied": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
}
MIXTRAL = dict(LLAMA, num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
               num_experts_per_tok=2, tie_word_embeddings=False)


def _perturbed(model):
  """Random weights well away from the initialisation (norm scales included), so that a
  misplaced or mis-transposed tensor shows in the logits."""
  torch.manual_seed(1)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.2 * torch.randn_like(p))
  return model.eval()


def _save_hf(path, kind="llama", dtype=None, max_shard_size=None, **overrides):
  torch.manual_seed(0)
  if kind == "llama":
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**LLAMA, **overrides}))
  elif kind == "qwen3":
    model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**{**LLAMA, **overrides}))
  elif kind == "mistral":
    model = transformers.MistralForCausalLM(transformers.MistralConfig(**{**LLAMA, **overrides}))
  else:
    model = transformers.MixtralForCausalLM(transformers.MixtralConfig(**{**MIXTRAL, **overrides}))
  model = _perturbed(model)
  if dtype is not None:
    model = model.to(dtype)
  kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
  model.save_pretrained(str(path), **kwargs)
  return str(path)


def _tokens(vocab_size, seed=0):
  return np.random.RandomState(seed).randint(0, vocab_size, (2, 12))


def _hf_logits(path, tokens):
  model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.numpy()


def _llmlab_logits(cfg, params, tokens):
  graphdef, _ = transformer.abstract(cfg)
  return np.asarray(transformer.apply(graphdef, params, jnp.asarray(tokens)))


def _tensors(path):
  out = {}
  for name in os.listdir(path):
    if name.endswith(".safetensors"):
      out.update(load_file(os.path.join(path, name)))
  return out


def _assert_same_tensors(a, b):
  assert sorted(a) == sorted(b)
  for name in a:
    assert a[name].dtype == b[name].dtype, name
    np.testing.assert_array_equal(a[name].view(np.uint8), b[name].view(np.uint8), err_msg=name)


def _defaults():
  """The config tree experiments.convert starts an imported workdir's config from."""
  from experiments.configs import default

  return default.get_config()


def _one_line_error(excinfo, *words):
  msg = str(excinfo.value)
  assert "\n" not in msg and all(w in msg for w in words), msg


@pytest.fixture(scope="module")
def llama_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf_llama")
  return {name: _save_hf(root / name, **v) for name, v in VARIANTS.items()}


@pytest.fixture(scope="module")
def mixtral_dir(tmp_path_factory):
  return _save_hf(tmp_path_factory.mktemp("hf_mixtral") / "m", kind="mixtral")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_llama_logits_equal_transformers(llama_dirs, variant):
  cfg, params = interop.load_hf(llama_dirs[variant])
  assert cfg.n_kv_heads == VARIANTS[variant]["num_key_value_heads"]
  assert cfg.tie_embeddings == VARIANTS[variant]["tie_word_embeddings"]
  assert (cfg.rope_theta, cfg.norm_eps) == (500.0, 1e-5)
  tokens = _tokens(cfg.vocab_size)
  np.testing.assert_allclose(
      _llmlab_logits(cfg, params, tokens), _hf_logits(llama_dirs[variant], tokens), atol=TOL, rtol=0)


def test_mixtral_logits_equal_transformers(mixtral_dir):
  cfg, params = interop.load_hf(mixtral_dir)
  assert (cfg.moe.n_experts, cfg.moe.top_k, cfg.moe.dispatch) == (4, 2, "dropless")
  tokens = _tokens(cfg.vocab_size)
  np.testing.assert_allclose(
      _llmlab_logits(cfg, params, tokens), _hf_logits(mixtral_dir, tokens), atol=TOL, rtol=0)


def test_rope_half_split_needs_no_permutation(llama_dirs):
  """The logits test is sensitive to the rotary layout: interleaving q/k (the other convention)
  breaks the match, so the plain reshape in hf_weights is the right conversion."""
  path = llama_dirs["gqa_tied"]
  cfg, params = interop.load_hf(path)
  dh = cfg.head_dim
  interleave = np.stack([np.arange(dh // 2), np.arange(dh // 2) + dh // 2], axis=1).reshape(-1)
  for name in ("wq", "wk"):
    w = params["blocks"]["attn"][name]
    w.set_value(w[...][..., interleave])
  tokens = _tokens(cfg.vocab_size)
  assert np.abs(_llmlab_logits(cfg, params, tokens) - _hf_logits(path, tokens)).max() > 100 * TOL


@pytest.mark.parametrize("variant", list(VARIANTS) + ["mixtral"])
def test_export_reproduces_tensors_and_transformers_logits(llama_dirs, mixtral_dir, tmp_path, variant):
  src = mixtral_dir if variant == "mixtral" else llama_dirs[variant]
  cfg, params = interop.load_hf(src)
  interop.save_hf(str(tmp_path / "out"), cfg, params, base_config=interop.read_hf_config(src))
  _assert_same_tensors(_tensors(src), _tensors(tmp_path / "out"))
  tokens = _tokens(cfg.vocab_size, seed=1)
  np.testing.assert_array_equal(_hf_logits(str(tmp_path / "out"), tokens), _hf_logits(src, tokens))


def test_sharded_checkpoint_imports_like_a_single_file(llama_dirs, tmp_path):
  sharded = _save_hf(tmp_path / "sharded", max_shard_size="20KB", **VARIANTS["mha_untied"])
  assert os.path.exists(os.path.join(sharded, safetensors_io.INDEX))
  _, params_sharded = interop.load_hf(sharded)
  _, params_single = interop.load_hf(llama_dirs["mha_untied"])
  for a, b in zip(jax.tree.leaves(params_sharded), jax.tree.leaves(params_single)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sharded_export_loads_in_transformers(llama_dirs, tmp_path):
  cfg, params = interop.load_hf(llama_dirs["gqa_tied"])
  interop.save_hf(str(tmp_path / "out"), cfg, params, max_shard_bytes=20_000)
  assert os.path.exists(tmp_path / "out" / safetensors_io.INDEX)
  tokens = _tokens(cfg.vocab_size)
  np.testing.assert_array_equal(
      _hf_logits(str(tmp_path / "out"), tokens), _hf_logits(llama_dirs["gqa_tied"], tokens))


def test_bfloat16_weights_round_trip_bit_exactly(tmp_path):
  src = _save_hf(tmp_path / "bf16", dtype=torch.bfloat16, **VARIANTS["gqa_tied"])
  cfg, params = interop.load_hf(src)
  assert cfg.param_dtype == "bfloat16" and params["embed"][...].dtype == jnp.bfloat16
  tokens = _tokens(cfg.vocab_size)
  # Same bfloat16 weights, float32 arithmetic on both sides.
  np.testing.assert_allclose(
      _llmlab_logits(cfg, params, tokens), _hf_logits(src, tokens), atol=TOL, rtol=0)
  interop.save_hf(str(tmp_path / "out"), cfg, params)
  _assert_same_tensors(_tensors(src), _tensors(tmp_path / "out"))


def test_param_dtype_override_converts_weights(llama_dirs):
  cfg, params = interop.load_hf(llama_dirs["gqa_tied"], param_dtype="bfloat16")
  assert cfg.param_dtype == "bfloat16" and params["blocks"]["attn"]["wq"][...].dtype == jnp.bfloat16


def test_unscanned_layout_round_trips(llama_dirs, tmp_path):
  src = llama_dirs["mha_untied"]
  cfg, params = interop.load_hf(src, scan_layers=False)
  assert not cfg.scan_layers and params["blocks"][1]["attn"]["wq"][...].shape == (32, 4, 8)
  interop.save_hf(str(tmp_path / "out"), cfg, params)
  _assert_same_tensors(_tensors(src), _tensors(tmp_path / "out"))


BASE = dict(LLAMA, model_type="llama", architectures=["LlamaForCausalLM"], num_attention_heads=4)
REFUSED = {
    "hidden_act": dict(hidden_act="gelu"),
    "rope_scaling.rope_type": dict(rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "rope_parameters.rope_type": dict(rope_parameters={"rope_type": "longrope", "rope_theta": 1e4}),
    "rope_parameters.original_max_position_embeddings": dict(
        rope_parameters={"rope_type": "llama3", "factor": 8.0, "rope_theta": 500.0}),
    "attention_bias": dict(attention_bias=True),
    "mlp_bias": dict(mlp_bias=True),
    "head_dim": dict(head_dim=7.5),
    "model_type": dict(model_type="gpt2"),
    "architectures": dict(architectures=["LlamaForSequenceClassification"]),
    "sliding_window": dict(model_type="mistral", architectures=["MistralForCausalLM"],
                           sliding_window=-3),
    "use_sliding_window": dict(model_type="qwen3", architectures=["Qwen3ForCausalLM"],
                               use_sliding_window=True, sliding_window=16),
    "layer_types": dict(layer_types=["full_attention", "sliding_attention"], sliding_window=16,
                        model_type="mistral", architectures=["MistralForCausalLM"]),
    "vocab_size": dict(vocab_size=None),
}


@pytest.mark.parametrize("field", list(REFUSED))
def test_unrepresentable_config_is_a_one_line_error_naming_the_field(tmp_path, field):
  (tmp_path / "config.json").write_text(json.dumps({**BASE, **REFUSED[field]}))
  with pytest.raises(interop.InteropError) as e:
    interop.load_hf(str(tmp_path))
  _one_line_error(e, field)


def test_settings_that_do_not_change_the_function_are_accepted():
  cfg = hf_config.to_model_config(dict(
      BASE, model_type="mixtral", architectures=["MixtralForCausalLM"], sliding_window=64,
      router_jitter_noise=0.1, attention_dropout=0.1, pretraining_tp=2, head_dim=8))
  assert cfg.moe.n_experts == 8 and cfg.head_dim == 8


# Families and RoPE scalings beyond Llama 2: tiny random models built by transformers. The test
# sequence (12 tokens) is longer than the original context (4), so every band of the scaled
# frequencies is exercised (head_dim 8 and theta 500: wavelengths 6.3, 30, 140 and 660 tokens).
FAMILIES = {
    "llama3.1": ("llama", dict(VARIANTS["gqa_tied"], rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16})),
    "yarn": ("llama", dict(VARIANTS["gqa_tied"], rope_scaling={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16})),
    "qwen3": ("qwen3", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                            tie_word_embeddings=True)),
    "mistral": ("mistral", dict(VARIANTS["gqa_tied"], sliding_window=5)),  # window < 12 tokens
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_llama3_yarn_qwen3_mistral_logits_equal_transformers_and_round_trip(family, tmp_path):
  """Import gives transformers' logits; without the family's feature (the RoPE scaling, Qwen3's
  QK-norm, Mistral's sliding window) they differ, so the comparison can fail; export reproduces every tensor and a
  config transformers reads back to the same model. Catches a wrong band of llama3 frequencies, a
  yarn ramp or attention factor off, and QK-norm applied after RoPE or over the wrong axis."""
  import dataclasses

  from model.rope import RopeScaling
  kind, overrides = FAMILIES[family]
  src = _save_hf(tmp_path / "hf", kind=kind, **overrides)
  cfg, params = interop.load_hf(src)
  tokens = _tokens(cfg.vocab_size)
  ours = _llmlab_logits(cfg, params, tokens)
  np.testing.assert_allclose(ours, _hf_logits(src, tokens), atol=TOL, rtol=0)
  if kind == "qwen3":
    assert cfg.qk_norm and cfg.head_dim == 16 != cfg.d_model // cfg.n_heads
    lacking = dataclasses.replace(cfg, qk_norm=False)
    pure = nnx.to_pure_dict(params)
    for name in ("q_norm", "k_norm"):
      del pure["blocks"]["attn"][name]
    _, plain = transformer.abstract(lacking)
    nnx.replace_by_pure_dict(plain, pure)
    other = _llmlab_logits(lacking, plain, tokens)
  elif kind == "mistral":
    assert cfg.sliding_window == 5
    other = _llmlab_logits(dataclasses.replace(cfg, sliding_window=0), params, tokens)
  else:
    assert cfg.rope_scaling.kind == overrides["rope_scaling"]["rope_type"]
    other = _llmlab_logits(dataclasses.replace(cfg, rope_scaling=RopeScaling()), params, tokens)
  assert np.max(np.abs(other - ours)) > 1e-3
  interop.save_hf(str(tmp_path / "out"), cfg, params)
  _assert_same_tensors(_tensors(src), _tensors(tmp_path / "out"))
  again, _ = interop.load_hf(str(tmp_path / "out"))
  assert again == cfg
  np.testing.assert_allclose(_hf_logits(str(tmp_path / "out"), tokens), ours, atol=TOL, rtol=0)


def test_transformers4_config_fields_are_read():
  """rope_theta at the top level and torch_dtype, as transformers < 5 writes them."""
  cfg = hf_config.to_model_config(dict(BASE, rope_theta=5e5, rope_scaling=None, torch_dtype="bfloat16"))
  assert cfg.rope_theta == 5e5


def test_checkpoint_tensor_without_a_place_is_an_error(llama_dirs, tmp_path):
  src = tmp_path / "m"
  shutil.copytree(llama_dirs["gqa_tied"], src)
  tensors = load_file(str(src / safetensors_io.SINGLE))
  tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros((32,), np.float32)
  os.remove(src / safetensors_io.SINGLE)
  safetensors_io.write(str(src), tensors)
  with pytest.raises(interop.InteropError) as e:
    interop.load_hf(str(src))
  _one_line_error(e, "q_proj.bias")


def test_missing_weights_and_existing_checkpoints_are_errors(llama_dirs, tmp_path):
  shutil.copy(os.path.join(llama_dirs["gqa_tied"], "config.json"), tmp_path / "config.json")
  (tmp_path / "pytorch_model.bin").write_bytes(b"")
  with pytest.raises(interop.InteropError) as e:
    interop.load_hf(str(tmp_path))
  _one_line_error(e, "pytorch_model.bin")
  with pytest.raises(interop.InteropError) as e:
    safetensors_io.write(llama_dirs["gqa_tied"], {})
  _one_line_error(e, "already holds a checkpoint")


def _llama_style_tokenizer():
  from tokenizers import Tokenizer, models

  vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate("abcdefgh ")}}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.add_special_tokens(["<unk>", "<s>", "</s>"])
  return tok


def test_special_tokens_map_onto_declared_roles(tmp_path):
  tok = _llama_style_tokenizer()
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(
      {"eos_token": {"content": "</s>"}, "bos_token": "<s>", "unk_token": "<unk>", "pad_token": None}))
  declared = hf_tokenizer.declared_special_tokens(str(tmp_path), tok, {})
  assert declared == {"eos": "</s>", "pad": None, "bos": "<s>", "unk": "<unk>"}
  assert hf_tokenizer.llmlab_roles(declared, tok) == ("</s>", "<unk>")
  # Without tokenizer files the ids in config.json name the roles.
  declared = hf_tokenizer.declared_special_tokens(
      str(tmp_path / "none"), tok, {"eos_token_id": [2], "bos_token_id": 1})
  assert hf_tokenizer.llmlab_roles(declared, tok) == ("</s>", "<s>")


def test_llama_style_special_tokens_are_recorded_and_exported_unchanged(tmp_path):
  """A tokenizer without llmlab's token names: the workdir's config records which tokens play
  end-of-text and padding; --to_hf restores the original tokenizer files and token ids."""
  from train import hf_workdir

  src = _save_hf(tmp_path / "hf", **VARIANTS["gqa_tied"])
  transformers.PreTrainedTokenizerFast(
      tokenizer_object=_llama_style_tokenizer(), bos_token="<s>", eos_token="</s>",
      unk_token="<unk>").save_pretrained(src)
  hf_workdir.import_workdir(src, str(tmp_path / "run"), defaults=_defaults(), seq_len=16)
  data = json.loads((tmp_path / "run" / "config.json").read_text())["data"]
  # "<s>" is declared, but this tokenizer adds no BOS (transformers' encoding is ["a"]), so no
  # text starts with it.
  assert (data["eot_token"], data["pad_token"], data["bos_token"]) == ("</s>", "<unk>", None)
  # Every script asks for llmlab's roles and gets the imported tokens' ids.
  from train import saved_run
  from train.align import data as alignment_data
  from train.data import pipeline as data_lib
  from train.data import tokenizer as tokenizer_lib

  tok = tokenizer_lib.load(str(tmp_path / "run"))
  assert tokenizer_lib.special_id(tok, tokenizer_lib.EOT) == 2
  assert tokenizer_lib.special_id(tok, tokenizer_lib.PAD) == 0
  # (a word-level vocabulary with no pre-tokenizer: each one-letter text is one token)
  assert data_lib.tokenize(["a", "d"], tok).tolist() == [3, 2, 6, 2]  # a </s> d </s>
  assert tokenizer_lib.start_ids(tok) == []
  assert alignment_data.encode_prompts(tok, ["b"], 3).tokens_NxP.tolist() == [[4, 0, 0]]
  out = saved_run.generate(str(tmp_path / "run"), "a", 3, temperature=0.0)
  assert out["text"].startswith("a") and 1 <= out["new_tokens"] <= 3
  hf_workdir.export_workdir(str(tmp_path / "run"), str(tmp_path / "out"))
  for name in ("tokenizer.json", "tokenizer_config.json"):
    assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "hf" / name).read_bytes()
  exported = json.loads((tmp_path / "out" / "config.json").read_text())
  assert (exported["bos_token_id"], exported["eos_token_id"], exported["pad_token_id"]) == (1, 2, None)
  hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
  assert (hf_tok.eos_token, hf_tok.pad_token) == ("</s>", None)


def _word_tokenizer(n_words=LLAMA["vocab_size"] - 3, prepend_bos=False):
  """Llama's special tokens and words "w3", "w4", ... up to the model's vocabulary, so that every
  id the model generates decodes; prepend_bos puts "<s>" before every text, as Llama 3's
  tokenizer.json does."""
  from tokenizers import Tokenizer, models, pre_tokenizers, processors

  vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i + 3}": i + 3 for i in range(n_words)}}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.add_special_tokens(["<unk>", "<s>", "</s>"])
  if prepend_bos:
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
  return tok


# (prepend_bos, tokenizer_config.json beyond tokenizer_class): what the HF tokenizer starts with.
START_CASES = {
    "no_post_processor": (False, {"bos_token": "<s>"}),
    "no_post_processor_add_bos_token_true": (False, {"bos_token": "<s>", "add_bos_token": True}),
    "post_processor_adds_bos": (True, {}),
    "post_processor_adds_bos_add_bos_token_false":
        (True, {"bos_token": "<s>", "add_bos_token": False}),
}


@pytest.mark.parametrize("case", list(START_CASES))
def test_start_token_is_what_transformers_prepends(tmp_path, case):
  """hf_tokenizer.start_token answers what transformers' own tokenizer prepends: tokenizer.json's
  post-processor decides; a declared bos_token and add_bos_token in tokenizer_config.json do
  not (transformers 5.24)."""
  prepend_bos, config = START_CASES[case]
  tok = _word_tokenizer(8, prepend_bos)
  tok.save(str(tmp_path / "tokenizer.json"))
  (tmp_path / "tokenizer_config.json").write_text(
      json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", **config}))
  hf_ids = transformers.AutoTokenizer.from_pretrained(str(tmp_path))("w4 w5").input_ids
  assert hf_ids[-2:] == [4, 5] and len(hf_ids) <= 3
  expected = "<s>" if len(hf_ids) == 3 else None
  assert hf_tokenizer.start_token(str(tmp_path), tok) == expected


GENERATE_PROMPT = "w5 w9 w17 w3 w40"
N_NEW = 8


def _hf_greedy(path, prompt, n_new):
  """(prompt ids, new ids) of transformers' tokenizer and greedy generate."""
  hf_tok = transformers.AutoTokenizer.from_pretrained(path)
  model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
  ids = hf_tok(prompt, return_tensors="pt").input_ids
  with torch.no_grad():
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=n_new, pad_token_id=model.config.eos_token_id)
  return ids[0].tolist(), out[0, ids.shape[1]:].tolist()


def _import_with_tokenizer(model_dir, root, *, prepend_bos, bos_token_id):
  """A copy of model_dir with a word tokenizer and config.json's bos_token_id set, imported by
  --from_hf into root/run; returns (HF directory, workdir)."""
  from train import hf_workdir

  src = root / "hf"
  shutil.copytree(model_dir, src)
  transformers.PreTrainedTokenizerFast(
      tokenizer_object=_word_tokenizer(prepend_bos=prepend_bos), eos_token="</s>",
      unk_token="<unk>").save_pretrained(str(src))
  hf = json.loads((src / "config.json").read_text())
  (src / "config.json").write_text(json.dumps({**hf, "bos_token_id": bos_token_id}))
  hf_workdir.import_workdir(str(src), str(root / "run"), defaults=_defaults(), seq_len=16)
  return str(src), str(root / "run")


# (model, tokenizer prepends "<s>", config.json's bos_token_id): today's llmlab prepended
# config.json's bos (id 1) in the first and last case and end-of-text in the second.
GREEDY_CASES = {
    "llama_config_bos_not_added": ("llama", False, 1),
    "llama_tokenizer_adds_bos": ("llama", True, None),
    "mixtral": ("mixtral", False, 1),
}


@pytest.mark.parametrize("case", list(GREEDY_CASES))
def test_imported_greedy_generation_equals_transformers(llama_dirs, mixtral_dir, tmp_path, case):
  from train import saved_run

  kind, prepend_bos, bos_token_id = GREEDY_CASES[case]
  model_dir = mixtral_dir if kind == "mixtral" else llama_dirs["gqa_tied"]
  src, workdir = _import_with_tokenizer(
      model_dir, tmp_path, prepend_bos=prepend_bos, bos_token_id=bos_token_id)
  hf_prompt, hf_new = _hf_greedy(src, GENERATE_PROMPT, N_NEW)
  out = saved_run.generate(workdir, GENERATE_PROMPT, N_NEW, temperature=0.0)
  assert out["new_ids"] == hf_new
  assert out["prompt_ids"] == hf_prompt


def test_llmlab_model_exports_with_equal_logits_and_its_token_ids(tmp_path):
  """Export alone (no import before it): a freshly initialised llmlab model and its tokenizer."""

  from model.config import ModelConfig
  from train.data import tokenizer as tokenizer_lib

  tok = _llmlab_tokenizer()
  cfg = ModelConfig(vocab_size=tok.get_vocab_size(), d_model=32, n_layers=2, n_heads=4,
                    n_kv_heads=2, d_ff=48, max_seq_len=32, tie_embeddings=False)
  # Random values set from numpy: transformer.create would compile a PRNG kernel per shape.
  _, params = transformer.abstract(cfg)
  rng = np.random.RandomState(0)
  nnx.replace_by_pure_dict(params, jax.tree_util.tree_map_with_path(
      lambda path, a: (float(path[-1].key == "scale") + 0.2 * rng.standard_normal(a.shape)).astype(
          np.float32), nnx.to_pure_dict(params)))
  interop.save_hf(str(tmp_path / "out"), cfg, params, tok)
  tokens = _tokens(cfg.vocab_size)
  np.testing.assert_allclose(
      _hf_logits(str(tmp_path / "out"), tokens), _llmlab_logits(cfg, params, tokens), atol=TOL, rtol=0)
  exported = json.loads((tmp_path / "out" / "config.json").read_text())
  assert exported["eos_token_id"] == tokenizer_lib.special_id(tok, tokenizer_lib.EOT)
  assert exported["pad_token_id"] == tokenizer_lib.special_id(tok, tokenizer_lib.PAD)
  assert exported["bos_token_id"] is None


def _llmlab_tokenizer():
  from train.data import tokenizer as tokenizer_lib

  words = ["alpha", "beta", "gamma", "delta", "def", "return", "class", "self"]
  text = [" ".join(words[(i * 7 + j) % len(words)] for j in range(50)) for i in range(20)]
  return tokenizer_lib.train_bpe(text, 300)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """(HF directory with an llmlab-style tokenizer, workdir written from it by --from_hf)."""
  from train.data import tokenizer as tokenizer_lib

  root = tmp_path_factory.mktemp("convert")
  tok = _llmlab_tokenizer()
  src = _save_hf(root / "hf", vocab_size=tok.get_vocab_size(), **VARIANTS["gqa_tied"])
  transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, eos_token=tokenizer_lib.EOT, pad_token=tokenizer_lib.PAD).save_pretrained(src)
  r = helpers.run_script(
      "experiments.convert", f"--from_hf={src}", f"--workdir={root / 'run'}", "--seq_len=16")
  assert r.returncode == 0, r.stderr[-2000:]
  return src, root / "run"


def test_converted_workdir_loads_with_the_same_logits(converted):
  from train import checkpoint as ckpt_lib

  src, workdir = converted
  cfg, _, params = ckpt_lib.load_params(str(workdir))
  tokens = _tokens(cfg.vocab_size)
  np.testing.assert_allclose(_llmlab_logits(cfg, params, tokens), _hf_logits(src, tokens), atol=TOL, rtol=0)


def test_to_hf_writes_what_auto_classes_load(converted, tmp_path):
  from train.data import tokenizer as tokenizer_lib

  src, workdir = converted
  out = tmp_path / "out"
  r = helpers.run_script("experiments.convert", f"--to_hf={out}", f"--workdir={workdir}")
  assert r.returncode == 0, r.stderr[-2000:]
  _assert_same_tensors(_tensors(src), _tensors(out))
  tokens = _tokens(LLAMA["vocab_size"])
  np.testing.assert_array_equal(_hf_logits(str(out), tokens), _hf_logits(src, tokens))
  hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
  text = "def alpha(self):\n  return beta  gamma"
  assert hf_tok.encode(text, add_special_tokens=False) == tokenizer_lib.encode(
      tokenizer_lib.load(str(workdir)), text)
  assert hf_tok.eos_token == tokenizer_lib.EOT and hf_tok.pad_token == tokenizer_lib.PAD


def test_converted_workdir_fine_tunes_from_step_0(converted, tmp_path, tiny_corpus):
  """experiments.train takes the workdir with its own config.py and starts at step 0."""
  workdir = tmp_path / "run"
  shutil.copytree(converted[1], workdir)
  r = helpers.run_script(
      "experiments.train", f"--workdir={workdir}", f"--config={workdir / 'config.py'}",
      f"--config.data.paths={tiny_corpus}", "--config.train.steps=1",
      "--config.train.batch_size=4", "--config.train.eval_batches=1")
  assert r.returncode == 0, r.stderr[-2000:]
  summary = json.loads(r.stdout.strip().splitlines()[-1])
  assert summary["start_step"] == 0 and summary["final_step"] == 1


def test_convert_cli_errors_are_one_line(tmp_path):
  r = helpers.run_script("experiments.convert", f"--workdir={tmp_path / 'run'}")
  assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--from_hf" in r.stderr
  (tmp_path / "hf").mkdir()
  (tmp_path / "hf" / "config.json").write_text(json.dumps(dict(BASE, hidden_act="relu")))
  r = helpers.run_script("experiments.convert", f"--from_hf={tmp_path / 'hf'}",
                         f"--workdir={tmp_path / 'run'}")
  assert r.returncode == 2 and "hidden_act" in r.stderr, r.stderr
  assert not os.path.exists(tmp_path / "run" / "config.json")


def _tree_bytes(root) -> dict:
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(pathlib.Path(root).rglob("*"))
          if p.is_file()}


def test_to_hf_into_a_workdir_or_over_an_export_is_refused_unless_overwrite(converted, tmp_path):
  """Catches: --to_hf writing over an llmlab workdir (its config.json replaced: training it then
  fails with KeyError 'model'), over the files of an earlier export, or --overwrite not reaching
  the export (or leaving stale safetensors beside the new ones)."""
  from train import config as config_lib
  from train import hf_workdir

  _, workdir = converted
  target = tmp_path / "other_run"
  shutil.copytree(workdir, target)
  before = _tree_bytes(target)
  with pytest.raises(config_lib.ConfigError, match=(
      rf"^--to_hf={target} holds an llmlab workdir .*pass --overwrite to replace its files$")):
    hf_workdir.export_workdir(str(workdir), str(target))
  assert _tree_bytes(target) == before
  out = tmp_path / "out"
  out.mkdir()
  (out / "model-00001-of-00002.safetensors").write_bytes(b"stale")
  (out / "notes.txt").write_text("kept")
  with pytest.raises(config_lib.ConfigError, match=(
      rf"^--to_hf={out} already holds model-00001-of-00002.safetensors, which the export would "
      "replace; export into a new directory, or pass --overwrite$")):
    hf_workdir.export_workdir(str(workdir), str(out))
  r = helpers.run_script("experiments.convert", f"--to_hf={target}", f"--workdir={workdir}",
                         "--overwrite")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "architectures" in json.loads((target / "config.json").read_text())
  hf_workdir.export_workdir(str(workdir), str(out), overwrite=True)
  assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
  assert (out / "notes.txt").read_text() == "kept"


@pytest.mark.parametrize("keep", ["half", "none"])
def test_from_hf_of_a_truncated_or_empty_safetensors_file_is_one_line_naming_it(
    llama_dirs, tmp_path, keep):
  """Catches: a truncated download (or a 0-byte file) reaching safetensors, whose SafetensorError
  ('incomplete metadata', 'header too small') names no file and escapes as a traceback; and a
  workdir half written before the weights failed."""
  from train import hf_workdir

  src = tmp_path / "hf"
  shutil.copytree(next(iter(llama_dirs.values())), src)
  weights = src / "model.safetensors"
  assert hf_workdir.safetensors_problem(str(weights)) is None
  os.truncate(weights, weights.stat().st_size // 2 if keep == "half" else 0)
  with pytest.raises(interop.InteropError) as e:
    hf_workdir.import_workdir(str(src), str(tmp_path / "run"), defaults=_defaults(), seq_len=16)
  _one_line_error(e, str(weights), "download it again")
  assert not (tmp_path / "run").exists()
