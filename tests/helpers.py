"""Small configs and subprocess runners shared by the tests."""

import os
import subprocess
import sys

import ml_collections

from experiments.configs import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(paths: str, **overrides) -> ml_collections.ConfigDict:
  """experiments/configs/tiny.py on `paths`, with dotted overrides ("train.steps": 4)."""
  c = tiny.get_config()
  c.data.paths = paths
  for dotted, value in overrides.items():
    node = c
    *parents, leaf = dotted.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def script_cmd(module: str, *args: str) -> list[str]:
  return [sys.executable, "-m", module, *args]


def script_env(n_devices: int = 1) -> dict:
  """The test process's environment for a script: its XLA flags (conftest's -O0 for the CPU code,
  which halves a tiny run's compile) with the device count replaced, its compilation cache."""
  env = dict(os.environ)
  kept = [f for f in env.get("XLA_FLAGS", "").split()
          if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join([*kept, f"--xla_force_host_platform_device_count={n_devices}"])
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env


def run_script(module: str, *args: str, n_devices: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
  """Runs `python -m module args` from the repo root and returns the finished process."""
  return subprocess.run(
      script_cmd(module, *args), cwd=ROOT, env=script_env(n_devices), capture_output=True,
      text=True, timeout=timeout)


def train_args(workdir, paths: str, *overrides: str) -> list[str]:
  return [f"--workdir={workdir}", "--config=experiments/configs/tiny.py",
          f"--config.data.paths={paths}", *overrides]
