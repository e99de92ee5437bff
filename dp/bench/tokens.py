"""Batch-1 latency per action chunk of the discrete-token policies against the continuous DiT.

    dp-bench tokens

Policies at Meta-World push shapes (state 39, action 4; H 16: 64 action tokens for the token
policies) with their default configs and fresh weights (the arithmetic of a trained policy of
the same config): ddvla at 12 rounds, ar_tokens (one pass per token, K/V cache), dit DDIM-10
(action_patch 4). Each row: median and p99 of ``predict_action`` over ``calls`` calls, its
network passes, and its ratio to dit.
"""
from __future__ import annotations

import numpy as np
import torch

from dp.bench.latency import measure
from dp.data import Normalizer
from dp.policies.ddvla import ARTokensPolicy, DDVLAPolicy
from dp.policies.dit import DiTPolicy
from dp.results import result_name, write_result

SHAPE_META = {"action": [4], "obs": {"state": [39]}}
CASES = [("dit DDIM-10", DiTPolicy, {"action_patch": 4}, 10),
         ("ddvla 12 rounds", DDVLAPolicy, {}, 12),
         ("ar_tokens", ARTokensPolicy, {}, 64)]


def _policy(cls, overrides: dict):
    torch.manual_seed(0)
    policy = cls(SHAPE_META, **overrides)
    rng = np.random.default_rng(0)
    policy.set_normalizer(Normalizer.fit({"action": rng.normal(size=(100, 4)), "state": rng.normal(size=(100, 39))}))
    return policy.eval()


def main(device: str = "cpu", calls: int = 100) -> None:
    rows = []
    for name, cls, overrides, passes in CASES:
        row = {"policy": name, "network_passes": passes, **measure(_policy(cls, overrides).to(device), calls,
                                                                      device=device)}
        rows.append(row)
    for row in rows:
        row["ratio_to_dit"] = row["median_ms"] / rows[0]["median_ms"]
    write_result(result_name("latency_tokens", device), rows,
                 ["policy", "network_passes", "median_ms", "p99_ms", "ratio_to_dit"],
                 {"batch": 1, "threads": torch.get_num_threads()}, device=device)
