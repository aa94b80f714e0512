"""Stacked runs against the same runs one after another: tokens/s and wall clock, side by side.

R learning-rate points of one small model are trained twice in one process: stacked
(train/stacked.py, one compiled step for all R) and sequentially (train/step.py's single-run
step, one compiled step per run, as a sweep point compiles its own). The two arms are timed in
interleaved rounds: each round runs K steps of the stacked arm and K steps of every separate run
one after another, the arm that goes first alternating, so that load from other jobs on a shared
machine falls on both alike. Each arm's first step (compile and one step) is timed apart. Data
comes from random tokens made before timing (no data pipeline in either arm). Used by
experiments/stacked_bench.py.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from model import transformer
from model.config import ModelConfig, count_params
from train import optimizer as optimizer_lib
from train import plots
from train import stacked
from train import step as step_lib
from train.config import TrainSettings


@dataclasses.dataclass
class Arm:
  """One arm's step(s) and state(s): steps[i] advances states[i] on batch i of a round."""

  name: str
  steps: list[Callable]
  states: list[Any]
  batch_of: Callable[[int, int], Any]  # (run slot i, step k) -> that slot's batch
  metrics: list[Any] = dataclasses.field(default_factory=list)

  def run(self, k0: int, n: int) -> None:
    """n steps of every slot, slot after slot, from step k0; waits for the results."""
    for i, step in enumerate(self.steps):
      for k in range(k0, k0 + n):
        self.states[i], m = step(self.states[i], self.batch_of(i, k))
        self.metrics[i] = m
    jax.block_until_ready((self.states, self.metrics))


def _timed(fn: Callable[[], None]) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def _separate_step(cfg: ModelConfig, t: TrainSettings) -> tuple[Callable, Any]:
  """One run alone, as a sweep point builds it: its own optimizer and jitted step."""
  graphdef, params = transformer.create(cfg, jax.random.key(t.seed))
  tx = optimizer_lib.make(t, t.steps)
  step = jax.jit(step_lib.make_train_step(
      step_lib.lm_loss(graphdef, -1), tx, grad_accum=t.grad_accum,
      lr_schedule=optimizer_lib.schedule_for(t, t.steps)), donate_argnums=0)
  return step, step_lib.init_state(params, tx, t.seed)


def stacked_arm(cfg: ModelConfig, runs: Sequence[TrainSettings], batches_NxRxBxL1: jax.Array,
                vmap_width: int = 0) -> Arm:
  """The runs stacked (train/stacked.py), their states created; batches cycled over N."""
  n = batches_NxRxBxL1.shape[0]
  training = stacked.make_stacked_training(cfg, runs, pad_id=-1, vmap_width=vmap_width)
  state = jax.block_until_ready(training.init())
  return Arm("stacked", [training.train_step], [state], lambda i, k: batches_NxRxBxL1[k % n],
             [None])


def sequential_arm(cfg: ModelConfig, runs: Sequence[TrainSettings], batches_NxRxBxL1: jax.Array
                   ) -> Arm:
  """The same runs, each alone (_separate_step), on the same batches."""
  n = batches_NxRxBxL1.shape[0]
  separate = [_separate_step(cfg, t) for t in runs]
  states = jax.block_until_ready([st for _, st in separate])
  return Arm("sequential", [s for s, _ in separate], states,
             lambda i, k: batches_NxRxBxL1[k % n, i], [None] * len(runs))


def measure(arms: Sequence[Arm], rounds: int, steps_per_round: int) -> dict[str, dict]:
  """Per arm: seconds of its first step (compile and one step), and of each timed round."""
  out = {a.name: {"first_step_s": _timed(lambda a=a: a.run(0, 1)), "round_s": []} for a in arms}
  for r in range(rounds):
    order = arms if r % 2 == 0 else list(reversed(arms))
    for a in order:
      out[a.name]["round_s"].append(_timed(lambda a=a: a.run(1 + r * steps_per_round,
                                                            steps_per_round)))
  return out


def final_losses(arm: Arm) -> list[float]:
  """Each run's loss at the arm's last step."""
  if arm.name == "stacked":
    return [float(x) for x in np.asarray(arm.metrics[0]["loss"])]
  return [float(m["loss"]) for m in arm.metrics]


def summarise(times: dict[str, dict], setup_s: dict[str, float], tokens_per_round: int,
              tokens_per_step_all_runs: int) -> dict[str, Any]:
  """tokens/s of each arm over the timed rounds; its wall clock with setup (model creation, the
  stacked init's compile) and the first step (the step's compile) added, and tokens/s over that;
  the ratios stacked over sequential (> 1: stacked is faster)."""
  arms = {}
  for name, t in times.items():
    timed = float(np.sum(t["round_s"]))
    wall = setup_s[name] + t["first_step_s"] + timed
    tokens = tokens_per_round * len(t["round_s"])
    arms[name] = {
        "setup_s": setup_s[name], "first_step_s": t["first_step_s"], "round_s": t["round_s"],
        "timed_s": timed, "tokens_per_sec": tokens / timed, "wall_s_with_compile": wall,
        "tokens_per_sec_with_compile": (tokens + tokens_per_step_all_runs) / wall}
  s, q = arms["stacked"], arms["sequential"]
  per_round = [b / a for a, b in zip(s["round_s"], q["round_s"])]
  return {"arms": arms,
          "throughput_ratio": s["tokens_per_sec"] / q["tokens_per_sec"],
          "throughput_ratio_per_round": per_round,
          "throughput_ratio_min_round": min(per_round),
          "wall_clock_ratio_with_compile": q["wall_s_with_compile"] / s["wall_s_with_compile"],
          "compile_ratio": (q["setup_s"] + q["first_step_s"]) / (s["setup_s"] + s["first_step_s"])}


def at_steps(result: dict, steps: int) -> dict[str, Any]:
  """Each arm's wall clock for whole runs of `steps` steps, estimated from its measured setup,
  first step and mean timed step (not measured at that length), and their ratio."""
  timed_steps = result["rounds"] * result["steps_per_round"]
  out = {"steps": steps}
  for name, a in result["arms"].items():
    out[f"{name}_wall_s"] = (a["setup_s"] + a["first_step_s"]
                             + (steps - 1) * a["timed_s"] / timed_steps)
  out["wall_clock_ratio"] = out["sequential_wall_s"] / out["stacked_wall_s"]
  return out


def benchmark(cfg: ModelConfig, runs: Sequence[TrainSettings], rounds: int,
              steps_per_round: int, vmap_width: int = 0, distinct_batches: int = 4
              ) -> dict[str, Any]:
  """Both arms built (setup timed: model creation and the stacked init's compile), measured in
  interleaved rounds, summarised; with each run's last loss in both arms."""
  t = runs[0]
  batches = jax.random.randint(jax.random.key(1234), (distinct_batches, len(runs), t.batch_size,
                                                      cfg.max_seq_len + 1), 0, cfg.vocab_size)
  # The eager ops of model creation compile once per process; done here, neither arm pays it.
  jax.block_until_ready(transformer.create(cfg, jax.random.key(0))[1])
  setup_s, arms = {}, []
  makers = (lambda: stacked_arm(cfg, runs, batches, vmap_width),
            lambda: sequential_arm(cfg, runs, batches))
  for make in makers:
    t0 = time.perf_counter()
    arms.append(make())
    setup_s[arms[-1].name] = time.perf_counter() - t0
  times = measure(arms, rounds, steps_per_round)
  tokens_per_step = len(runs) * t.batch_size * cfg.max_seq_len
  result = summarise(times, setup_s, tokens_per_step * steps_per_round, tokens_per_step)
  for a in arms:
    result["arms"][a.name]["final_losses"] = final_losses(a)
  result["final_loss_max_abs_diff"] = float(np.max(np.abs(
      np.subtract(*[result["arms"][n]["final_losses"] for n in ("stacked", "sequential")]))))
  result |= {"runs": len(runs), "params": count_params(cfg)["total"],
             "tokens_per_step_all_runs": tokens_per_step, "steps_per_round": steps_per_round,
             "rounds": rounds, "steps_per_run": 1 + rounds * steps_per_round,
             "vmap_width": vmap_width}
  result["estimate_at_train_steps"] = at_steps(result, t.steps)
  return result


def plot(result: dict, out_dir: str) -> str:
  """Tokens/s of the two arms, steady and with the first step (compile) counted."""
  plt = plots.pyplot()
  arms = result["arms"]
  fig, ax = plt.subplots(figsize=(5.6, 3.6))
  names = ["sequential", "stacked"]
  x = np.arange(2)
  for off, key, label in [(-0.2, "tokens_per_sec", "timed steps"),
                          (0.2, "tokens_per_sec_with_compile", "with compile")]:
    ax.bar(x + off, [arms[n][key] for n in names], 0.4, label=label)
  ax.set_xticks(x, [f"{result['runs']} runs {n}" for n in names])
  ax.set_ylabel("tokens/s, all runs together")
  ax.set_title(f"{result['runs']} lr points, {result['params'] / 1e3:.0f}k params: stacked "
               f"x{result['throughput_ratio']:.2f} (x{result['wall_clock_ratio_with_compile']:.2f} "
               f"wall with compile, {result['steps_per_run']} steps per run)", fontsize=8)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3, axis="y")
  path = os.path.join(out_dir, "stacked_runs.png")
  plots.save(fig, path, dpi=110)
  return path
