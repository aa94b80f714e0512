"""train/saved_run.generate_batch and experiments.generate --prompts_file: batched prompts decode
as each alone, outputs stop at the earliest stop string, too many new tokens are clipped."""

import json

import jax

from model import transformer
from tests.helpers import run_script
from train import saved_run


def test_cut_at_stop_cuts_at_the_earliest_stop_whatever_its_order():
  assert saved_run.cut_at_stop("ab\n\ncd END ef", ["END", "\n\n"]) == ("ab", True)
  assert saved_run.cut_at_stop("ab END", ["", "zz"]) == ("ab END", False)
  assert saved_run.cut_at_stop("END", ["END"]) == ("", True)


def _random_model(tiny_run) -> saved_run.Loaded:
  """tiny_run's model and tokenizer with random weights: its greedy text depends on the whole
  prompt (the 3-step trained model continues every prompt alike, which would hide a row that
  read another row's prompt or padding)."""
  run = saved_run.Loaded.of(tiny_run)
  _, params = transformer.create(run.cfg, jax.random.key(7))
  return saved_run.Loaded(run.workdir, run.cfg, run.graphdef, params, run.tokenizer)


def test_a_batch_of_prompts_of_different_lengths_decodes_as_each_alone(tiny_run):
  """Catches padding read as prompt, a row decoded at the padded length's positions, rows or
  keys shifted between batches, and filler rows leaking into the results."""
  run = _random_model(tiny_run)
  prompts = ["alpha beta gamma def return", "x", "class self"]  # batches of 2: a filler row
  batched, note = saved_run.generate_batch(run, prompts, 5, temperature=0.0, batch_size=2)
  alone = [saved_run.generate_batch(run, [p], 5, temperature=0.0)[0][0] for p in prompts]
  assert note == ""
  assert [r["continuation"] for r in batched] == [r["continuation"] for r in alone]
  assert [r["prompt"] for r in batched] == prompts
  assert len({r["continuation"] for r in alone}) > 2  # the prompts do lead to different texts


def test_too_many_new_tokens_are_clipped_with_a_note(tiny_run):
  run = _random_model(tiny_run)
  results, note = saved_run.generate_batch(run, ["alpha", "alpha beta gamma"], 200,
                                           temperature=0.0)
  longest = len(run.prompt_ids("alpha beta gamma"))
  assert f"clipped to {32 - longest}" in note and "\n" not in note
  assert all(r["new_tokens"] <= 32 - longest for r in results)


def test_cli_prompts_file_with_stop_and_echo(tiny_run, tmp_path):
  """The script's outputs are generate_batch's, cut at the stop string, after the prompt with
  --echo; a .jsonl prompts file is read by its "prompt" field."""
  run = saved_run.Loaded.of(tiny_run)
  prompts = ["alpha", "def return"]
  plain, _ = saved_run.generate_batch(run, prompts, 6, temperature=0.0)
  stop = plain[0]["continuation"][2:4]  # a stop string inside the first output
  (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
  proc = run_script("experiments.generate", f"--workdir={tiny_run}",
                    f"--prompts_file={tmp_path / 'p.jsonl'}", "--max_new_tokens=6",
                    "--temperature=0", f"--stop={stop}", "--echo", "--batch_size=2",
                    n_devices=8)  # as this process: its compiled generation comes from the cache
  assert proc.returncode == 0, proc.stderr[-2000:]
  got = [json.loads(line) for line in proc.stdout.splitlines()]
  for r, p in zip(got, plain):
    cut = p["continuation"][:p["continuation"].find(stop)] if stop in p["continuation"] else (
        p["continuation"])
    assert r["text"] == p["prompt"] + cut
  assert got[0]["stopped"] == "stop"
