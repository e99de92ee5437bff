"""Batch-1 latency of ``policy=rdt`` with and without the cached condition K/V.

    dp-bench rdt

An RDT policy of the default config (fresh weights) at the shapes of the five-robot lift mixture
(``task=rdt_lift5``: unified state 128, non-robot state 19, five embodiments, two instructions),
DPM-Solver++ 5 steps. "cached": the language and observation K/V of every cross-attention layer
are projected once per prediction (``DiT.encode_condition``), as dp does. "per step": they are
projected again at every network call, as RDT's official sampler does (its blocks project the
condition inside ``forward``). The two run interleaved, ``rounds`` x ``calls`` each; the ratio is
of the medians.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from dp.data import Normalizer
from dp.data.unified import EMBODIMENTS
from dp.policies.rdt import RDTPolicy
from dp.results import result_name, write_result

EMBODIMENT_NAMES = ["panda", "sawyer", "iiwa", "ur5e", "two_arm_panda"]
OBJECT_DIM = 19
SHAPE_META = {"action": [128], "obs": {"state": [128], "object": [OBJECT_DIM]}, "embodiments": EMBODIMENT_NAMES,
              "instructions": ["lift the red cube", "lift the pot by both handles with the two arms"]}


def _policy() -> RDTPolicy:
    torch.manual_seed(0)
    policy = RDTPolicy(SHAPE_META, language={"encoder": "builtin", "layers": 2})
    rng = np.random.default_rng(0)
    arrays = {f"{k}__{e}": rng.normal(size=(100, OBJECT_DIM if k == "object" else 128))
              for e in EMBODIMENT_NAMES for k in ("state", "action", "object")}
    policy.set_normalizer(Normalizer.fit(arrays))
    return policy.eval()


def _obs(policy: RDTPolicy) -> dict:
    emb = EMBODIMENTS["panda"]
    return {"state": torch.randn(1, policy.n_obs_steps, 128), "object": torch.randn(1, policy.n_obs_steps, OBJECT_DIM),
            "state_mask": torch.as_tensor(emb.state_mask())[None], "action_mask": torch.as_tensor(emb.action_mask())[None],
            "object_mask": (torch.arange(OBJECT_DIM) < 10)[None], "embodiment": torch.zeros(1, dtype=torch.long),
            "control_hz": torch.tensor([emb.control_hz]), "instruction": ["lift the red cube"]}


class PerStepConditionKV:
    """Inside this context the DiT projects the condition K/V at every network call (RDT's way)."""

    def __init__(self, policy: RDTPolicy):
        self.dit, self.groups = policy.dit, None

    def __enter__(self):
        dit, encode, forward = self.dit, self.dit.encode_condition, self.dit.forward

        def remember(cond=None, *args, **kwargs):
            self.groups = cond
            return encode(cond, *args, **kwargs)

        def project_then_forward(x, level, cond=None, context=None, cache=None, **kwargs):
            cache.cross_kv = [b.cross_keys_values(self.groups[i % len(self.groups)]) for i, b in enumerate(dit.blocks)]
            return forward(x, level, cond, context, cache, **kwargs)

        dit.encode_condition, dit.forward = remember, project_then_forward
        return self

    def __exit__(self, *exc):
        del self.dit.encode_condition, self.dit.forward  # back to the class's methods


def _times(policy, obs, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        policy.predict_action(obs)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main(device: str = "cpu", calls: int = 20, rounds: int = 8) -> None:
    policy = _policy().to(device)
    obs = _obs(policy)
    cached, per_step = [], []
    _times(policy, obs, 5)
    for _ in range(rounds):
        cached += _times(policy, obs, calls)
        with PerStepConditionKV(policy):
            per_step += _times(policy, obs, calls)
    rows = [{"condition K/V": name, "median_ms": float(np.median(t)), "p99_ms": float(np.percentile(t, 99)),
             "calls": len(t)} for name, t in (("cached (once per prediction)", cached), ("per step", per_step))]
    for row in rows:
        row["ratio_to_cached"] = row["median_ms"] / rows[0]["median_ms"]
    write_result(result_name("rdt_latency", device), rows, ["condition K/V", "median_ms", "p99_ms", "calls",
                                                            "ratio_to_cached"],
                 {"batch": 1, "sampler": "dpm_solver_pp 5", "threads": torch.get_num_threads(),
                  "params_M": policy.num_parameters() / 1e6}, device=device)
