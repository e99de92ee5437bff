"""The benchmarks' own policies build and run one call each (what they time is measured by dp-bench, not here)."""
import pytest
import torch

from dp.bench import sampling
from dp.eval.sweep import cost_per_call, parse_spec


def test_every_sampling_row_runs_once():
    policies = {kind: sampling._policy(kind, "cpu") for kind in sampling.PROCESSES}
    obs = {"state": torch.randn(1, 1, 39)}
    passes = {}
    for spec in sampling.SPECS:
        kind, _, rest = spec.rpartition(" ")
        policy = policies[kind or "x0"]
        policy.set_sampler(**parse_spec(rest))
        passes[spec] = cost_per_call(policy, obs, repeats=1)["passes"]
    assert passes["ddim:10"] == 10 and passes["meanflow meanflow:1"] == 1 and passes["truncated:2"] == 2


def test_the_inference_floor_counts_the_predictions_matrix_products():
    from dp.bench.inference import gemm_floor, profile_table
    from dp.bench.latency import BASE, _policy

    policy = _policy("dit", BASE)
    policy.set_sampler("ddim", 2)
    obs = {"state": torch.randn(1, policy.n_obs_steps, 39)}
    floor = gemm_floor(policy, obs, repeats=2)
    # per network call 4 linears per block (qkv, proj, fc1, fc2); the prefix pass and the encoders add more
    depth = len(policy.dit.blocks)
    assert floor["gemms"] >= 2 * 4 * depth and floor["gflop"] > 0 and floor["replay_ms"] > 0
    assert floor["bound_ms"] == pytest.approx(floor["gflop"] / floor["peak_gflops"] * 1000)
    rows, wall = profile_table(policy, obs, predictions=2)
    classes = {r["class"] for r in rows}
    assert {"matmul", "attention"} <= classes and wall > 0
    assert abs(sum(r["ms_per_prediction"] for r in rows) - wall) < 0.05 * wall or \
        sum(r["ms_per_prediction"] for r in rows) >= wall  # the table accounts for the whole prediction


def test_the_eval_envs_benchmark_times_every_configuration(tmp_path):
    from dp.bench.eval_envs import CONFIGS, run
    from train_helpers import tiny_checkpoint

    tiny_checkpoint(tmp_path / "run")
    rows = run(str(tmp_path / "run"), episodes=2, rounds=1)
    assert [(r["n_envs"], r["vector"]) for r in rows] == CONFIGS
    assert rows[0]["ratio_to_1_sync"] == 1.0 and all(r["episodes_per_s"] > 0 for r in rows)
