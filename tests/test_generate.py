"""train/saved_run.py and experiments.generate: a trained run continues a prompt; bad input is a
one-line error. Also train/studies/distill.py (experiments.distill_data), on the same run."""

import os
import shutil

import pytest

from train import saved_run
from tests.helpers import run_script


def test_generates_and_reports_speed(tiny_run):
  r = saved_run.generate(tiny_run, "alpha beta", 8, temperature=0.8, seed=3)
  assert r["text"].startswith("alpha beta")
  assert 1 <= r["new_tokens"] <= 8 and r["tokens_per_second"] > 0
  assert saved_run.generate(tiny_run, "alpha beta", 8, temperature=0.8, seed=3)["text"] == r["text"]


def test_greedy_speculative_with_itself_as_draft_accepts_everything(tiny_run):
  plain = saved_run.generate(tiny_run, "def", 10, temperature=0.0)
  spec = saved_run.generate(tiny_run, "def", 10, temperature=0.0, draft_workdir=tiny_run, gamma=3)
  assert spec["text"] == plain["text"]
  assert spec["alpha"] == 1.0


def test_prompt_longer_than_max_seq_len_is_an_error_and_new_tokens_are_clipped(tiny_run):
  with pytest.raises(ValueError, match="longer than max_seq_len=32"):
    saved_run.generate(tiny_run, " alpha" * 40, 4)
  r = saved_run.generate(tiny_run, "alpha", 200, temperature=0.0)  # the documented command's 200
  assert "clipped to" in r["note"] and len(r["prompt_ids"]) + r["new_tokens"] <= 32


def test_draft_with_another_tokenizer_is_an_error(tiny_run, tmp_path):
  from train.data import tokenizer as tokenizer_lib

  other = str(tmp_path / "other")
  shutil.copytree(tiny_run, other)
  tokenizer_lib.save(tokenizer_lib.train_bpe(["zzz yyy " * 50], 300), other)
  with pytest.raises(ValueError, match="tokenizers of .* differ"):
    saved_run.generate(tiny_run, "def", 4, draft_workdir=other)


def test_cli_missing_workdir_is_a_one_line_error(tmp_path):
  proc = run_script("experiments.generate", f"--workdir={tmp_path / 'nothing'}", "--prompt=x")
  assert proc.returncode == 2
  assert proc.stderr.strip().startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
  assert os.path.basename(str(tmp_path / "nothing")) in proc.stderr


def test_cli_writes_the_continuation_to_stdout_and_statistics_to_stderr(tiny_run):
  expected = saved_run.generate(tiny_run, "alpha", 4, temperature=0.0)["continuation"]
  proc = run_script("experiments.generate", f"--workdir={tiny_run}", "--prompt=alpha",
                    "--max_new_tokens=4", "--temperature=0")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout == expected + "\n"
  assert "tokens/s" in proc.stderr and "tokens/s" not in proc.stdout


def test_distill_data_records_the_targets_greedy_continuations(tiny_run, tmp_path):
  """Catches: a continuation written against the wrong prompt (an off-by-one across batches, or
  a filler row of the last, partial batch leaking into the file), a prompt missing from the text,
  and a continuation that depends on the batch it was decoded in (it must be the target's greedy
  function of its prompt alone)."""
  import json

  from train.studies import distill
  from train.data import tokenizer as tokenizer_lib

  args = dict(prompts=3, prompt_tokens=4, new_tokens=5, seed=1)
  by2 = distill.record(tiny_run, str(tmp_path / "b2.jsonl"), batch=2, **args)
  distill.record(tiny_run, str(tmp_path / "b1.jsonl"), batch=1, **args)
  assert by2["continuations"] == 3 and not (tmp_path / "b2.jsonl.tmp").exists()
  lines = [json.loads(x)["text"] for x in open(tmp_path / "b2.jsonl")]
  assert lines == [json.loads(x)["text"] for x in open(tmp_path / "b1.jsonl")]
  tok = tokenizer_lib.load(tiny_run)
  rows = distill.prompt_rows(tiny_run, 3, 4, 1)
  assert [t.startswith(tokenizer_lib.decode(tok, r.tolist())) for t, r in zip(lines, rows)] == [True] * 3
  assert len({t for t in lines}) > 1  # three different prompts, not one repeated
  with pytest.raises(ValueError, match="--new_tokens"):
    distill.record(tiny_run, str(tmp_path / "x.jsonl"), batch=1, **dict(args, new_tokens=0))


def test_distill_data_writes_each_continuation_after_its_own_prompt(tiny_run, tmp_path, monkeypatch):
  """A stand-in decoder whose continuation is the prompt's last token, repeated: every line must
  end with its own prompt's last token (the trained tiny model continues every prompt alike, so
  it cannot show a continuation written after a neighbour's prompt, or a filler row's)."""
  import json
  from types import SimpleNamespace

  import jax.numpy as jnp

  from train.studies import distill
  from model import generation
  from train.data import tokenizer as tokenizer_lib

  def fake_make_generate(cfg, graphdef, spec):
    def fn(params, ids_BxT, lengths_B, keys_B):
      last_B = ids_BxT[jnp.arange(ids_BxT.shape[0]), lengths_B - 1]
      return SimpleNamespace(tokens_BxN=jnp.repeat(last_B[:, None], spec.max_new_tokens, 1))
    return fn

  monkeypatch.setattr(generation, "make_generate", fake_make_generate)
  distill.record(tiny_run, str(tmp_path / "f.jsonl"), batch=2, prompts=5, prompt_tokens=4,
                      new_tokens=3, seed=2)
  tok = tokenizer_lib.load(tiny_run)
  rows = distill.prompt_rows(tiny_run, 5, 4, 2)
  expected = [tokenizer_lib.decode(tok, r.tolist() + [int(r[-1])] * 3) for r in rows]
  assert [json.loads(x)["text"] for x in open(tmp_path / "f.jsonl")] == expected


def test_decoding_scripts_add_an_xla_flag_without_overriding_the_users(monkeypatch):
  """Decoding scripts turn YNNPACK dots off through XLA_FLAGS. Catches the user's own setting of
  the same flag being overwritten (or duplicated, which XLA rejects), and other flags dropped."""
  from train import cli

  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  cli.use_xla_flag(cli.NO_YNN_DOTS)
  assert os.environ["XLA_FLAGS"].split() == [
      "--xla_force_host_platform_device_count=8", cli.NO_YNN_DOTS]
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot")
  cli.use_xla_flag(cli.NO_YNN_DOTS)
  assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"


def test_prefer_xla_dots_leaves_xla_flags_alone_where_an_accelerator_plugin_is_installed(
    monkeypatch):
  """The CPU-only flag must never reach an accelerator's XLA (an unknown flag aborts it). Catches
  the plugin check inverted or dropped: with a CUDA plugin found the flag is not added, without
  one it is."""
  import importlib.util

  from train import cli

  for installed, expected in ((("jax_cuda13_plugin",), ""), ((), cli.NO_YNN_DOTS)):
    # prefer_xla_dots asks only for plugin modules: each is found iff it is in `installed`.
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, i=installed: object() if name in i else None)
    monkeypatch.setenv("XLA_FLAGS", "")
    cli.prefer_xla_dots()
    assert os.environ["XLA_FLAGS"] == expected


def test_distinct_ngram_fraction_is_low_for_a_loop_and_one_for_varied_text():
  """decode_bench's measure of how loopy the target's greedy text is. Catches an off-by-one in
  the n-gram windows (a 4-token sequence has exactly one 4-gram) and counting tokens for n-grams."""
  from train.studies.decode_runs import distinct_ngram_fraction

  assert distinct_ngram_fraction([1, 2, 3, 4]) == 1.0
  assert distinct_ngram_fraction(list(range(10))) == 1.0
  assert distinct_ngram_fraction([1, 2] * 10) == 2 / 17  # 17 windows, two distinct
  assert distinct_ngram_fraction([1, 2, 3]) == 1.0  # no 4-gram at all
