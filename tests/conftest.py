"""Test set-up: 8 CPU devices, so multi-device code runs in CI without accelerators.

The XLA flag must be set before jax is imported anywhere.
"""

import os
import sys
import tempfile

# LLVM at -O0 for the CPU code: compiling, not running, is most of these tests' time (tiny models,
# a few steps), and -O0 compiles faster. The HLO passes are unchanged, and every comparison a test
# makes is between programs compiled the same way (scripts the tests start inherit the flags).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the whole test run (both xdist workers and every
# script a test starts inherit it): many tests compile the same tiny training step, and on 2 cores
# compiling is most of their time. Keyed by the run, so no cache outlives it into the next run.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"llmlab-test-xla-cache-{_RUN}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# A fixed CPU peak for MFU (train/mfu.py) instead of a second of matmuls in every training
# process; the tests check that MFU is logged and positive, never its value.
os.environ.setdefault("LLMLAB_PEAK_FLOPS", "1e11")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# Property tests draw the same examples on every run: a failure found once is found again, and a
# run never goes red by the luck of the draw. Loaded before any test module applies @settings.
settings.register_profile("derandomized", derandomize=True)
settings.load_profile("derandomized")


@pytest.fixture
def tiny_corpus(tmp_path):
  """A small .txt + .jsonl corpus: enough text for a few batches of short sequences."""
  import json
  import random

  rng = random.Random(0)
  words = ["alpha", "beta", "gamma", "delta", "def", "return", "class", "import", "self", "x"]
  d = tmp_path / "corpus"
  d.mkdir()
  for i in range(6):
    (d / f"doc{i}.txt").write_text(
        " ".join(rng.choice(words) for _ in range(400)) + "\n", encoding="utf-8")
  with open(d / "more.jsonl", "w", encoding="utf-8") as f:
    for i in range(20):
      f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(60))}) + "\n")
  return str(d / "*.txt") + "," + str(d / "more.jsonl")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  """A tiny model trained for 3 steps on a small corpus (docN.txt), once per test process:
  generation, evaluation and distillation tests read it (training is their slow part). Its
  metrics.jsonl holds the eval_loss of step 3, the checkpoint it ends with, and the in-loop
  scores of the first 4 items of experiments/tasks/arithmetic.jsonl (train.eval_tasks,
  tests/test_evaluate.py)."""
  import random

  from tests.helpers import tiny_config
  from train import pretrain

  root = tmp_path_factory.mktemp("tiny_run")
  rng = random.Random(0)
  words = ["alpha", "beta", "gamma", "def", "return", "class", "import", "self", "x"]
  for i in range(4):
    (root / f"doc{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(300)) + "\n")
  workdir = str(root / "run")
  tasks = (os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "experiments", "tasks", "arithmetic.jsonl"),)
  pretrain.train(tiny_config(str(root / "*.txt"), **{
      "train.steps": 3, "train.eval_tasks": tasks, "train.eval_tasks_max_items": 4}), workdir)
  return workdir
