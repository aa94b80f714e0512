"""The emergence, lost-in-the-middle, 1/sqrt(d_k), BPE and accelerator studies end to end on tiny
grids (the scaling and MoE studies: tests/test_scaling_study.py)."""

import json

import numpy as np

from train.studies import sweep
from tests.helpers import run_script


def _rows(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_emergence_ladder_end_to_end(tmp_path):
  out = run_script("experiments.emergence", "--config=experiments/configs/emergence.py:tiny",
                   f"--workdir={tmp_path}")
  assert out.returncode == 0, out.stderr[-2000:]
  rows = _rows(tmp_path / "results.jsonl")
  assert sorted((r["n_layers"], r["digits"]) for r in rows) == [(1, 1), (1, 2), (2, 1), (2, 2)]
  for r in rows:
    assert 0 <= r["exact_match"] <= 1 and 0 <= r["token_accuracy"] <= 1
    assert r["token_edit_distance"] >= 0 and r["answer_logprob"] < 0
  assert (tmp_path / "emergence.png").exists() and (tmp_path / "results.json").exists()


def _oracle_of_the_first_pair(tok):
  """A scorer that answers right exactly when the gold pair is the first one: it reads the keys
  and values from the prompt's text, so it checks where the prompt put the gold pair and that the
  answer is that pair's value."""

  def score(prompts, answers):
    out = []
    for p_ids, a_ids in zip(prompts, answers):
      text = tok.decode(p_ids)
      pairs = text.split("|")[-1].split("?")[0].split()
      keys, values = pairs[0::2], pairs[1::2]
      gold = keys.index(text.split("?")[-1].strip())
      out.append(gold == 0 and tok.decode(a_ids).strip() == values[gold])
    return np.array(out)

  return score


def test_lost_in_middle_end_to_end_and_from_an_init_workdir(tmp_path):
  from experiments.configs import lost_in_middle as config
  from train.data import tokenizer as tokenizer_lib
  from train.studies import retrieval_eval

  out = run_script("experiments.lost_in_middle", "--config=experiments/configs/lost_in_middle.py:tiny",
                   f"--workdir={tmp_path}")
  assert out.returncode == 0, out.stderr[-2000:]
  rows = _rows(tmp_path / "results.jsonl")
  # 2 variants x (k=2: positions 1, 2; k=5: positions 1, 5).
  assert len(rows) == 8 and {r["variant"] for r in rows} == {"after", "both"}
  assert sorted({(r["k"], r["position"]) for r in rows}) == [(2, 1), (2, 2), (5, 1), (5, 5)]
  assert all(r["ci95"][0] <= r["accuracy"] <= r["ci95"][1] and r["seeds"] == [0] for r in rows)
  assert (tmp_path / "lost_in_middle.png").exists()
  # One example per row, right-padded (the corpus is far below one shard's 64M tokens).
  cfg = config.get_config("tiny")
  row = cfg.base.data.seq_len + 1
  stream = np.load(next(tmp_path.glob("shared/*/data/src-*/train-00000.npy"))).astype(np.int64)
  eot = stream[-1]
  assert len(stream) % row == 0 and np.all(stream[row - 1::row] == eot)
  assert np.sum(stream == eot) == len(stream) // row

  # The bookkeeping of positions and accuracy, with a scorer that knows the answer exactly when
  # the gold pair comes first.
  run = next(tmp_path.glob("points/*"))
  tok = tokenizer_lib.load(str(run))
  oracle = retrieval_eval.position_rows(cfg, tok, row - 1, _oracle_of_the_first_pair(tok))
  assert [r["accuracy"] for r in oracle] == [float(r["position"] == 1) for r in oracle]

  again = run_script("experiments.lost_in_middle", "--config=experiments/configs/lost_in_middle.py:tiny",
                     f"--workdir={tmp_path / 'eval'}", f"--init_workdir={run}")
  assert again.returncode == 0, again.stderr[-2000:]
  assert [r["accuracy"] for r in _rows(tmp_path / "eval" / "results.jsonl")] == [
      r["accuracy"] for r in rows]


def test_lost_in_middle_seed_mean_has_a_paired_interval_around_it():
  from train.studies import retrieval_eval

  row = {"variant": "after", "k": 4, "position": 1, "n": 4}
  per_seed = {0: [{**row, "accuracy": 1.0, "ci95": [0.5, 1.0], "correct": "1111"}],
              1: [{**row, "accuracy": 0.5, "ci95": [0.2, 0.8], "correct": "1100"}]}
  (mean,) = retrieval_eval.combine(per_seed)
  assert mean["accuracy"] == 0.75 and mean["accuracy_by_seed"] == [1.0, 0.5]
  assert 0.5 <= mean["ci95"][0] < 0.75 < mean["ci95"][1] <= 1.0  # resamples: 4 to 8 hits of 8
  lo, hi = retrieval_eval.wilson(45, 50)
  assert 0.78 < lo < 0.79 and 0.95 < hi < 0.96  # 90% of 50: Wilson's 95% interval


def test_study_attention_with_the_scale_is_the_models_own_attention():
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from experiments.configs import attention_scale as config
  from model import layers
  from train.studies import score_scale_training as training

  tcfg = config.get_config("tiny").train
  cfg = training.model_config(tcfg, 16)
  base = layers.Attention(cfg, nnx.Rngs(params=jax.random.key(0)))
  x_BxTxD = jax.random.normal(jax.random.key(1), (2, tcfg.seq_len, cfg.d_model))
  positions_BxT = jnp.broadcast_to(jnp.arange(tcfg.seq_len)[None], (2, tcfg.seq_len))
  expected = base(x_BxTxD, positions_BxT)
  study = training.study_attention_class()
  # The copy-for-study with the scale is the model's attention, and the scale reaches the scores.
  assert jnp.allclose(study(base, 16 ** -0.5)(x_BxTxD, positions_BxT), expected, atol=1e-5)
  assert not jnp.allclose(study(base, 1.0)(x_BxTxD, positions_BxT), expected, atol=1e-3)
  graphdef, params = training.build_model(tcfg, 16, scaled=False, seed=0)
  assert all(type(b.attn) is study and b.attn.scale == 1.0 for b in nnx.merge(graphdef, params).blocks)


def test_attention_scale_end_to_end_restarts_and_the_unscaled_softmax_saturates(tmp_path):
  args = ["--config=experiments/configs/attention_scale.py:tiny", f"--workdir={tmp_path}",
          f"--out={tmp_path / 'out'}"]
  out = run_script("experiments.attention_scale", *args)
  assert out.returncode == 0, out.stderr[-2000:]
  summary = json.load(open(tmp_path / "out" / "results.json"))
  small, large = summary["init"]["16"], summary["init"]["256"]
  for d_k, r in ((16, small), (256, large)):  # Vaswani et al.: var(q.k) = d_k for unit variances
    assert abs(r["unscaled"]["var_qk"] / d_k - 1) < 0.2 and abs(r["scaled"]["var_scores"] - 1) < 0.2
  # With the scale the softmax looks the same at every d_k; without it, it collapses onto one key
  # and the gradient reaching the scores shrinks.
  assert abs(small["scaled"]["entropy"] - large["scaled"]["entropy"]) < 0.3
  assert large["unscaled"]["entropy"] < 0.5 * large["scaled"]["entropy"]
  assert large["unscaled"]["saturated_share"] > 0.3 and large["scaled"]["saturated_share"] == 0
  assert large["unscaled"]["grad_scores_norm_median"] < 0.5 * small["unscaled"]["grad_scores_norm_median"]
  assert set(summary["train"]) == {"16-scaled", "16-unscaled"}
  assert all(np.isfinite(r["val_loss_mean"]) and r["val_loss_mean"] > 0 for r in summary["train"].values())
  assert (tmp_path / "out" / "attention_scale.png").exists()
  again = run_script("experiments.attention_scale", *args, "--launcher=print")
  assert again.returncode == 0 and again.stdout == ""  # every point done: nothing handed out


def test_bpe_study_end_to_end_compresses_more_with_a_larger_vocabulary(tmp_path):
  from experiments.configs import bpe
  from train.studies import bpe_measures

  out = run_script("experiments.bpe_study", "--config=experiments/configs/bpe.py:tiny",
                   f"--workdir={tmp_path}", f"--out={tmp_path / 'out'}")
  assert out.returncode == 0, out.stderr[-2000:]
  summary = json.load(open(tmp_path / "out" / "results.json"))
  for kind in ("code", "prose"):
    by_vocab = summary["by_corpus"][kind]
    assert by_vocab["256"]["bytes_per_token"] == 1.0  # the bytes alone: no merges
    assert by_vocab["512"]["bytes_per_token"] > 1.3
    assert by_vocab["512"]["multi_piece_share"] < by_vocab["256"]["multi_piece_share"]
    assert by_vocab["512"]["unicode_round_trips"] == 5 * 10
  assert (tmp_path / "out" / "bpe.png").exists()
  assert sweep.pending(str(tmp_path), bpe_measures.make_points(bpe.get_config("tiny"))) == []


def test_bpe_unicode_check_fails_on_a_tokenizer_with_unknown_tokens():
  from tokenizers import Tokenizer, models, pre_tokenizers
  import pytest

  from train.studies import bpe_measures

  samples = bpe_measures.unicode_samples(3, 20, seed=0)
  vocab = {c: i for i, c in enumerate(["[UNK]"] + [chr(c) for c in range(32, 127)])}
  lossy = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
  lossy.pre_tokenizer = pre_tokenizers.Whitespace()
  with pytest.raises(AssertionError):
    bpe_measures.check_no_unknown(lossy, samples)


def test_bpe_prose_is_docstrings_and_comments_without_code():
  from train.studies import bpe_corpus

  source = ('"""Module doc."""\n\nimport os  # why os\n\n\ndef f(x):\n  """Adds one.\n\n  More.\n  """\n'
            '  # first line\n  # second line\n  return x + 1\n')
  prose = bpe_corpus.prose_of(source)
  assert prose == "Module doc.\n\nwhy os\n\nAdds one.\n\nMore.\n\nfirst line second line"
  assert bpe_corpus.prose_of("def broken(:\n") == ""


def test_bpe_study_reads_the_same_stdlib_files_as_the_default_corpus():
  from train.data import pipeline as data
  from train.studies import bpe_corpus

  assert sorted(bpe_corpus.source_files("", seed=0)) == data.stdlib_files()
def test_accelerator_smoke_runs_every_section_without_grain_or_ml_collections(tmp_path):
  """Catches: a section that raises (it would be recorded under errors, not in sections), a
  results.json missing a number the docs quote, and an import of grain, ml_collections or
  tokenizers creeping into the script's path (a device machine has none of them)."""
  import subprocess
  import sys

  from tests.helpers import ROOT, script_env

  launcher = (
      "import runpy, sys\n"
      "for name in ('grain', 'ml_collections', 'tokenizers'):\n"
      "  sys.modules[name] = None  # importing it now raises ImportError\n"
      f"sys.argv = ['accelerator', '--smoke', '--out={tmp_path}']\n"
      "runpy.run_module('experiments.accelerator', run_name='__main__')\n")
  done = subprocess.run([sys.executable, "-c", launcher], cwd=ROOT, env=script_env(),
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  result = json.load(open(tmp_path / "results.json"))
  assert result["errors"] == {} and set(result["sections"]) == {"train_step", "attention",
                                                                "decode", "speculative", "zero"}
  train = result["sections"]["train_step"]
  assert train["variants"]["llmlab"]["ratio_to_measured_peak"] > 0
  assert train["variants"]["llmlab"]["tokens_per_sec"] > 0 and train["llmlab_over_peer_flops"] > 0
  timed = {r["implementation"] for r in result["sections"]["attention"]["rows"] if "time_s" in r}
  assert {"reference", "flash"} <= timed
  decode = result["sections"]["decode"]
  assert decode["tokens_per_s"] > 0 and decode["bound_tokens_per_s"] > 0
  assert [r["batch"] for r in decode["rows"]] == [1, 2]  # --smoke's batches, each measured
  # Greedy speculative decoding must emit the target's tokens (float32 on a CPU), and the speedup
  # computed from the measured costs must grow with alpha (a flipped E(alpha) would not).
  spec = result["sections"]["speculative"]
  assert spec["same_tokens_as_target_greedy"] and spec["round_s"] > 0
  speedups = [spec["speedup_at_alpha"][a] for a in sorted(spec["speedup_at_alpha"], key=float)]
  assert speedups == sorted(speedups) and speedups[0] < speedups[-1]
  assert [r["stage"] for r in result["sections"]["zero"]["stages"]] == [0, 3]  # --smoke's
  assert all(r["compiled"]["peak"] > 0 for r in result["sections"]["zero"]["stages"])
