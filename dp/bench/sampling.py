"""Compute per executed action of each sampler, at batch 1 (untrained weights: cost only).

The policy is mw_push's real-time configuration (action_patch 4) (`README`, "Real-time"): state obs,
n_obs_steps 1, horizon 16, 8 executed actions per call, x0 prediction, 20 anchors; "flow" rows train
on the flow path, "meanflow" rows with MeanFlow (one pass per chunk). For each
sampler: FLOPs of one warm ``predict_action`` (``torch.utils.flop_counter``), network passes
(a pass over all anchors at once counts once), median latency, each per executed action,
and the saving against DDIM-10. Success rates need a trained checkpoint: ``python -m
dp.eval.sweep``.
"""
from __future__ import annotations

import numpy as np
import torch

from dp.data import Normalizer
from dp.eval.sweep import add_savings, cost_per_call, parse_spec
from dp.policies import DiTPolicy
from dp.results import result_name, write_result

# "<process> <sampler spec>": the process the policy trains with (default: vp_cosine with x0 prediction)
SPECS = ["ddim:10", "streaming:2", "streaming:4", "truncated:2", "ddim:2", "ddim:4", "dpm_solver_pp:2",
         "dpm_solver_pp:4", "flow euler:1", "flow euler:2", "flow euler:4", "meanflow meanflow:1",
         "meanflow meanflow:2", "meanflow streaming:2:base=meanflow"]
PROCESSES = {"x0": {"prediction": "x0"}, "flow": {"schedule": "flow", "prediction": "velocity"},
             "meanflow": {"name": "meanflow"}}


def _policy(kind: str, device: str) -> DiTPolicy:
    torch.manual_seed(0)
    kw = {"anchors": {"count": 20}} if kind == "x0" else {}
    if kind != "flow":
        kw["streaming"] = {"train_fraction": 0.8}
    sampler = {"name": "meanflow", "steps": 1} if kind == "meanflow" else None
    policy = DiTPolicy({"action": [4], "obs": {"state": [39]}}, n_obs_steps=1, action_patch=4, process=PROCESSES[kind],
                       sampler=sampler, **kw)
    rng = np.random.default_rng(0)
    policy.set_normalizer(Normalizer.fit({"action": rng.uniform(-1, 1, (100, 4)), "state": rng.normal(size=(100, 39))}))
    if kind == "x0":
        anchors = policy.plugins["anchors"].anchors
        anchors.copy_(torch.rand_like(anchors) * 2 - 1)
    return policy.to(device).eval()


def run(device: str = "cpu") -> list[dict]:
    policies = {kind: _policy(kind, device) for kind in PROCESSES}
    obs = {"state": torch.randn(1, 1, 39, device=device)}
    rows = []
    for spec in SPECS:
        kind, _, rest = spec.rpartition(" ")
        sampler = parse_spec(rest)
        policy = policies[kind or "x0"]
        policy.set_sampler(**sampler)
        cost = cost_per_call(policy, obs)
        ta = policy.n_action_steps
        rows.append({"sampler": spec, "gflops_per_action": cost["gflops"] / ta, "passes_per_action": cost["passes"] / ta,
                     "ms_per_action": cost["ms"] / ta})
    return add_savings(rows)


def main(device: str = "cpu") -> None:
    rows = run(device)
    write_result(result_name("sampling_cost", device), rows,
                 ["sampler", "gflops_per_action", "flops_saving", "passes_per_action", "passes_saving", "ms_per_action",
                  "latency_saving"], {"batch": 1, "executed_actions_per_call": 8, "threads": torch.get_num_threads()},
                 device=device)


if __name__ == "__main__":
    main()
