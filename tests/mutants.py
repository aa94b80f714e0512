"""Mutation check: does the suite notice when the maths is broken? (`make mutants`, not `make test`.)

Each mutation is a few exact string replacements in one source file (each `old` must occur exactly
once, so a refactor that moves the code fails here loudly instead of testing nothing). One at a
time, in a temporary copy of the repository (the working tree is never touched), the mutation is
applied and only the tests of the module it touches are run; a failing run "kills" the mutant,
a passing one lets it "survive". The score is killed / total. Every test selection is first run
on the unmutated code and must pass, so that a kill means the mutation was noticed.

  python tests/mutants.py            all mutations
  python tests/mutants.py grpo_min   the named ones only
  python tests/mutants.py --list
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Mutant:
  name: str
  path: str  # source file, relative to the repository root
  edits: tuple[tuple[str, str], ...]  # (old, new), each old exactly once in the file
  tests: tuple[str, ...]  # pytest arguments: test files and -k selections


def _in(path: str, tests: tuple[str, ...], **edits_by_name) -> list[Mutant]:
  """The mutations of one source file, checked by one test selection: name=[(old, new), ...]."""
  return [Mutant(name, path, tuple(edits), tests) for name, edits in edits_by_name.items()]


MUTANTS = [
    *_in("model/masks.py",
         ("tests/test_model.py", "-k", "reference_attention_matches or future_tokens"),
         mask_strict=[
             ("kv_pos[None, None, :] <= q_positions_BxT[:, :, None]",
              "kv_pos[None, None, :] < q_positions_BxT[:, :, None]")],
         mask_swapped=[
             ("kv_pos[None, None, :] <= q_positions_BxT[:, :, None]",
              "q_positions_BxT[:, :, None] <= kv_pos[None, None, :]")]),
    *_in("model/attention.py", ("tests/test_model.py", "-k", "reference_attention_matches"),
         attention_scale=[("scores_BxKxGxTxS * (dh ** -0.5 if scale is None else scale)",
                          "scores_BxKxGxTxS * (dh ** 0.5 if scale is None else scale)")]),
    *_in("model/rope.py", ("tests/test_layers.py",),
         rope_sign=[
             ("[x1 * cos - x2 * sin, x2 * cos + x1 * sin]",
              "[x1 * cos + x2 * sin, x2 * cos - x1 * sin]")],
         rope_halves_swapped=[
             ("[x1 * cos - x2 * sin, x2 * cos + x1 * sin]",
              "[x2 * cos + x1 * sin, x1 * cos - x2 * sin]")],
         rope_frequencies=[
             ("theta ** (-np.arange(0, dh // 2", "theta ** (np.arange(0, dh // 2")]),
    *_in("model/rope.py", ("tests/test_interop.py", "-k", "llama3 or yarn"),
         llama3_band_unclipped=[("smooth_F = np.clip(smooth_F, 0.0, 1.0)", "smooth_F = smooth_F")],
         yarn_ramp_reversed=[
             ("return (1 - ramp_F) * inv_freq_F + ramp_F * inv_freq_F / s.factor",
              "return ramp_F * inv_freq_F + (1 - ramp_F) * inv_freq_F / s.factor")]),
    *_in("model/masks.py", ("tests/test_model.py", "-k", "packed"),
         document_positions_off_by_one=[
             ("return idx_T - last_start_BxT, segment_ids_BxT",
              "return idx_T - last_start_BxT + 1, segment_ids_BxT")],
         document_segments_not_passed=[
             ("mask = seg if mask is None else mask & seg", "mask = mask")]),
    *_in("model/masks.py", ("tests/test_flash.py", "-k", "sliding_window"),
         window_one_too_wide=[
             ("mask = mask & (kv_pos[None, None, :] > q_positions_BxT[:, :, None] - window)",
              "mask = mask & (kv_pos[None, None, :] >= q_positions_BxT[:, :, None] - window)")]),
    *_in("model/kv_cache.py", ("tests/test_generation.py", "-k", "ring"),
         ring_slot_not_modulo=[("slots_B = start_B % k_BKxDhxS.shape[2]", "slots_B = start_B")]),
    *_in("model/mla.py", ("tests/test_generation.py", "-k", "mla"),
         mla_absorbed_scale=[("dc, scale=cfg.attn_scale,", "dc, scale=(dc + cfg.qk_rope_head_dim) ** -0.5,")]),
    *_in("train/step.py", ("tests/test_step.py", "-k", "loss_sums or router"),
         ce_padding_mask=[
             ("mask_BxT = targets_BxT != pad_id", "mask_BxT = targets_BxT == pad_id")],
         router_terms_dropped=[
             ("return n * (aux_weights[0] * lb + aux_weights[1] * z), sums",
              "return jnp.zeros(()), sums")],
         router_terms_weights_swapped=[
             ("return n * (aux_weights[0] * lb + aux_weights[1] * z), sums",
              "return n * (aux_weights[1] * lb + aux_weights[0] * z), sums")],
         lm_loss_without_router_terms=[
             ('return ce_sum + aux + z, n, {"loss": ce_sum, **sums, **z_sums}',
              'return ce_sum + z, n, {"loss": ce_sum, **sums, **z_sums}')]),
    *_in("train/step.py", ("tests/test_step.py", "-k", "token_logps"),
         token_logps_temperature_inverted=[
             ("logits_BxTxV.astype(jnp.float32) / temperature",
              "logits_BxTxV.astype(jnp.float32) * temperature")]),
    *_in("train/align/dpo.py", ("tests/test_dpo.py", "-k", "not precomputed and not sequence_logp"),
         dpo_margin_reversed=[
             ("h_B = chosen_ratio_B - rejected_ratio_B",
              "h_B = rejected_ratio_B - chosen_ratio_B")],
         dpo_sigmoid_sign=[
             ("loss_B = -jax.nn.log_sigmoid(beta * h_B)",
              "loss_B = -jax.nn.log_sigmoid(-beta * h_B)")]),
    *_in("train/align/grpo.py", ("tests/test_grpo.py", "-k", "not mu_1"),
         grpo_min_to_max=[
             ("-jnp.minimum(unclipped_NxT, clipped_NxT)",
              "-jnp.maximum(unclipped_NxT, clipped_NxT)")],
         grpo_clip_bounds_swapped=[
             ("jnp.clip(ratio_NxT, 1.0 - epsilon, 1.0 + epsilon_high)",
              "jnp.clip(ratio_NxT, 1.0 - epsilon_high, 1.0 + epsilon)")],
         grpo_k3_reversed=[
             ("log_ratio = ref_logp_NxT - logp_NxT", "log_ratio = logp_NxT - ref_logp_NxT")]),
    *_in("model/moe.py",
         ("tests/test_moe.py", "-k", "load_balance or z_loss or priority or router_stats"),
         load_balance_no_e=[
             ("p_E = jnp.mean(r.probs_NxE, axis=0)\n  return n_experts * jnp.sum(f_E * p_E)",
              "p_E = jnp.mean(r.probs_NxE, axis=0)\n  return jnp.sum(f_E * p_E)")],
         load_balance_stats_no_e=[
             ("MoEStats(n_experts * jnp.sum(f_E * p_E)", "MoEStats(jnp.sum(f_E * p_E)")],
         capacity_token_major=[
             ("expert_A = r.expert_NxK.T.reshape(-1)", "expert_A = r.expert_NxK.reshape(-1)"),
             ("jnp.tile(jnp.arange(n), k), r.weight_NxK.T.reshape(-1)",
              "jnp.repeat(jnp.arange(n), k), r.weight_NxK.reshape(-1)")]),
    *_in("train/optimizer.py", ("tests/test_optimizer.py",),
         decay_mask_removed=[
             ("weight_decay=cfg_train.weight_decay,\n                      mask=decay_mask)),",
              "weight_decay=cfg_train.weight_decay)),")],
         # (Flipping the metadata's default alone is an equivalent mutant: make_param always
         # sets it.)
         decay_mask_inverted=[
             ('v.replace(v.get_metadata().get("weight_decay", True))',
              'v.replace(not v.get_metadata().get("weight_decay", True))')],
         warmup_off_by_one=[("warmup_steps=warmup,", "warmup_steps=warmup + 1,")],
         cosine_end_value=[("end_value=lr / 10)", "end_value=0.0)")],
         clip_per_element=[
             ("optax.clip_by_global_norm(cfg_train.grad_clip)",
              "optax.clip(cfg_train.grad_clip)")]),
    *_in("sharding/data_parallel.py",
         ("tests/test_zero.py", "-k", "losses_match and (stage1 or stage0)"),
         zero_psum_to_pmean=[("return jax.lax.psum(g, dp)", "return jax.lax.pmean(g, dp)")]),
    # Only expert weights are stored split (over the expert axis) yet have gradients split further
    # (over data, from stage 2): test_zero's dense layouts never reach this line.
    *_in("sharding/data_parallel.py",
         ("tests/test_moe.py", "-k", "expert_parallel_training_matches_one_device and stage2"),
         zero_no_scatter_slice=[
             ("g = jax.lax.dynamic_slice_in_dim(g, jax.lax.axis_index(axes) * size, size, dim)",
              "g = jax.lax.dynamic_slice_in_dim(g, 0, size, dim)")]),
    *_in("model/speculative.py", ("tests/test_speculative.py",),
         speculative_accept_swapped=[
             ("accept_BxG = u_BxG * q_at_BxG <= p_at_BxG",
              "accept_BxG = u_BxG * p_at_BxG <= q_at_BxG")]),
    *_in("model/kv_cache.py",
         ("tests/test_generation.py", "-k", "cache_writes or rows_at_different"),
         kv_cache_write_shifted=[
             ("idx[slot_axis] = start_B[b]", "idx[slot_axis] = start_B[b] + 1")]),
    *_in("model/flash.py", ("tests/test_flash.py", "-k", "gqa_with_lengths or segment_ids_match"),
         flash_no_acc_rescale=[("acc * correction[..., None] + pv", "acc + pv")],
         flash_no_l_rescale=[("l = l * correction + p.sum(axis=-1)", "l = l + p.sum(axis=-1)")],
         flash_scale=[
             ("scale=float(dh ** -0.5 if scale is None else scale)",
              "scale=float(dh ** 0.5 if scale is None else scale)")]),
    *_in("model/kernels.py", ("tests/test_kernels.py", "-k", "jaxpr"),
         pallas_always_falls_back=[
             ("if _pallas_falls_back(q_BxTxHxDh.shape[1]",
              "if True or _pallas_falls_back(q_BxTxHxDh.shape[1]")],
         pallas_tpu_falls_back_on_two_segment_arrays=[
             ("@_falls_back_to_flash(one_segment_array=False)",
              "@_falls_back_to_flash(one_segment_array=True)")],
         pallas_falls_back_on_one_segment_array=[
             ("return one_segment_array and q_segment_ids_BxT is not kv_segment_ids_BxS",
              "return one_segment_array and q_segment_ids_BxT is not None")]),
]


def _tracked_files() -> list[str]:
  out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                       cwd=ROOT, capture_output=True, check=True).stdout
  return [p for p in out.decode().split("\0") if p and os.path.isfile(os.path.join(ROOT, p))]


def _copy_repo(dst: str) -> None:
  for rel in _tracked_files():
    os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
    shutil.copy2(os.path.join(ROOT, rel), os.path.join(dst, rel))


def mutate(source: str, m: Mutant) -> str:
  for old, new in m.edits:
    count = source.count(old)
    if count != 1:
      raise SystemExit(f"mutant {m.name}: {old!r} occurs {count} times in {m.path}, not once")
    source = source.replace(old, new)
  return source


def _pytest(tests) -> list[str]:
  return [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:xdist", "-p", "no:cacheprovider",
          *tests]


def run(mutants: list[Mutant], timeout: float = 900, out: str = "") -> int:
  """Runs each mutant; prints a line each and the score; with `out`, also writes the record
  (every mutant's verdict, killing test and time, the score) to out/results.json."""
  records = []
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONDONTWRITEBYTECODE="1")
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  killed = 0
  start = time.time()
  with tempfile.TemporaryDirectory(prefix="llmlab-mutants-") as tmp:
    _copy_repo(tmp)
    for m in mutants:  # check every mutation applies before running any
      with open(os.path.join(tmp, m.path), encoding="utf-8") as f:
        mutate(f.read(), m)
    # A selection that fails unmutated would "kill" every mutant: each must pass first.
    for tests in dict.fromkeys(m.tests for m in mutants):
      t0 = time.time()
      proc = subprocess.run(_pytest(tests), cwd=tmp, env=env, capture_output=True, text=True,
                            timeout=timeout)
      print(f"{'baseline':>9}  {' '.join(tests):<60} {time.time() - t0:6.1f}s  "
            f"{'passes' if proc.returncode == 0 else 'FAILS'}", flush=True)
      if proc.returncode != 0:
        print(proc.stdout[-3000:], flush=True)
        raise SystemExit(f"the unmutated code fails {' '.join(tests)}: fix that first")
    for m in mutants:
      path = os.path.join(tmp, m.path)
      with open(path, encoding="utf-8") as f:
        original = f.read()
      with open(path, "w", encoding="utf-8") as f:
        f.write(mutate(original, m))
      t0 = time.time()
      try:
        proc = subprocess.run(_pytest(m.tests), cwd=tmp, env=env, capture_output=True, text=True,
                              timeout=timeout)
        # 0: every selected test passed; 5: none was selected (a broken selection, not a kill).
        verdict = {0: "survived", 5: "no tests"}.get(proc.returncode, "killed")
        if proc.returncode not in (0, 1, 5):
          verdict = f"error (pytest exit {proc.returncode})"
        first_failure = next((line for line in proc.stdout.splitlines()
                              if line.startswith("FAILED") or line.startswith("ERROR")), "")
      except subprocess.TimeoutExpired:
        verdict, first_failure = "killed (timeout)", ""
      finally:
        with open(path, "w", encoding="utf-8") as f:
          f.write(original)
      killed += verdict.startswith("killed")
      records.append({"name": m.name, "path": m.path, "verdict": verdict,
                      "first_failure": first_failure, "seconds": round(time.time() - t0, 1)})
      print(f"{verdict:>9}  {m.name:<40} {time.time() - t0:6.1f}s  {first_failure[:110]}",
            flush=True)
  print(f"score: {killed}/{len(mutants)} killed in {time.time() - start:.0f}s", flush=True)
  if out:
    sys.path.insert(0, ROOT)  # run as a file, tests/ is first on the path
    from train import provenance

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
      json.dump({"provenance": provenance.provenance(), "killed": killed, "total": len(mutants), "seconds": round(time.time() - start),
                 "date": time.strftime("%Y-%m-%d"), "host_cpus": os.cpu_count(),
                 "mutants": records}, f, indent=2)
  return 0 if killed == len(mutants) else 1


def main(argv: list[str]) -> int:
  if "--list" in argv:
    for m in MUTANTS:
      print(f"{m.name:<30} {m.path:<28} {' '.join(m.tests)}")
    return 0
  chosen = [m for m in MUTANTS if not argv or m.name in argv]
  unknown = set(argv) - {m.name for m in MUTANTS}
  if unknown:
    raise SystemExit(f"unknown mutant(s) {sorted(unknown)}; see --list")
  # The whole set is the project's score: recorded in results/mutants/ (the README cites it).
  return run(chosen, out="" if argv else os.path.join(ROOT, "results", "mutants"))


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
