"""Sampler specs for the sweep and the sampling benchmark; cost counting on a tiny policy."""
import pytest
import torch

from dp.eval.sweep import cost_per_call, parse_spec
from tests.test_streaming import _policy


def test_sampler_specs_parse_with_options():
    assert parse_spec("ddim:10") == {"name": "ddim", "steps": 10}
    assert parse_spec("truncated:2:fallback_score=0.1:fallback=ddpm") == {
        "name": "truncated", "steps": 2, "fallback_score": 0.1, "fallback": "ddpm"}
    with pytest.raises(ValueError, match="name:steps"):
        parse_spec("ddim")


def test_cost_counts_passes_and_flops_per_call():
    policy = _policy(streaming={"train_fraction": 0.8})
    obs = {"state": torch.randn(1, 1, 5)}
    policy.set_sampler("ddim", 10)
    full = cost_per_call(policy, obs, repeats=2)
    policy.set_sampler("streaming", 2)  # 2 chunks: one pass per warm call
    stream = cost_per_call(policy, obs, repeats=2)
    assert full["passes"] == 10 and stream["passes"] == 1
    assert 0 < stream["gflops"] < full["gflops"] / 4
