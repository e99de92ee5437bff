"""The benchmarks' own policies build and run one call each (what they time is measured by dp-bench, not here)."""
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
