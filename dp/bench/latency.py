"""predict_action latency at batch 1: median and p99 over 200 calls, per policy x sampler x steps.

Policies are built at Meta-World push shapes (state 39, action 4) with default configs;
weights are freshly initialised, which does not change the arithmetic, so the timing
is that of a trained policy of the same config.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from dp.data import Normalizer
from dp.policies import DiTPolicy, MLPBCPolicy
from dp.results import result_name, sync, write_result

SHAPE_META = {"action": [4], "obs": {"state": [39]}}
BASE = {"action_patch": 4}  # dp/configs/policy/dit.yaml's default: 4 actions per token
CASES = [
    ("dit", BASE, "ddim", 10),
    ("dit", BASE, "ddim", 4),
    ("dit", BASE, "ddim", 2),
    ("dit", {"action_patch": 1}, "ddim", 10),
    ("dit", {"action_patch": 1}, "ddim", 2),
    ("dit", BASE, "dpm_solver_pp", 10),
    ("dit", BASE, "dpm_solver_pp", 4),
    ("dit", BASE, "ddpm", 100),
    ("dit", {**BASE, "process": {"schedule": "flow", "prediction": "velocity"}}, "euler", 4),
    ("dit", {**BASE, "process": {"schedule": "edm", "prediction": "edm"}}, "heun", 5),
    ("mlp_bc", {}, None, None),
]
# (policy, sampler, steps, torch.compile kwargs): the per-step blocks compiled (DiT.compile_blocks)
COMPILED_CASES = [("dit", "ddim", 10, {"dynamic": False})]
CUDA_COMPILED_CASES = [("dit", "ddim", 10, {"dynamic": False}), ("dit", "ddim", 10, {"mode": "reduce-overhead"})]


MEANFLOW = {"process": {"name": "meanflow"}, "sampler": {"name": "meanflow", "steps": 1}}


def _policy(name: str, overrides: dict):
    """A policy at Meta-World push shapes: ``dit``, ``meanflow`` (the dit trained with MeanFlow) or ``mlp_bc``."""
    cls = {"dit": DiTPolicy, "meanflow": DiTPolicy, "mlp_bc": MLPBCPolicy}[name]
    policy = cls(SHAPE_META, **({**MEANFLOW, **overrides} if name == "meanflow" else overrides))
    rng = np.random.default_rng(0)
    policy.set_normalizer(Normalizer.fit({"action": rng.normal(size=(100, 4)), "state": rng.normal(size=(100, 39))}))
    return policy.eval()


def measure(predictor, calls: int = 200, warmup: int = 10, device: str = "cpu", obs: dict | None = None) -> dict:
    """Wall time of ``predictor.predict_action(obs)`` (a policy, an artifact, a graphed prediction), CPU
    tensors in as a control loop has them. obs defaults to one state observation (1, n_obs_steps, 39)."""
    if obs is None:
        obs = {"state": torch.randn(1, predictor.n_obs_steps, 39)}
    with torch.inference_mode():
        for _ in range(warmup):
            predictor.predict_action(obs)
        samples = []
        for _ in range(calls):
            t0 = time.perf_counter()
            predictor.predict_action(obs)
            sync(device)
            samples.append(time.perf_counter() - t0)
    ms = np.asarray(samples) * 1000
    return {"median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)), "calls": calls}


def run(calls: int = 200, device: str = "cpu") -> list[dict]:
    rows = []
    for name, overrides, sampler, steps in CASES:
        policy = _policy(name, overrides).to(device)
        if sampler is not None:
            policy.set_sampler(sampler, steps)
        label = name + "".join(f" {k}={v}" for k, v in overrides.items() if k != "process")
        row = {"policy": label, "process": (policy.config.get("process") or {}).get("schedule", "vp_cosine")
               if name == "dit" else "-", "sampler": sampler or "-", "steps": steps or "-",
               "params_M": policy.num_parameters() / 1e6, "network_calls": policy.sampler.network_calls()
               if sampler else 1}
        row.update(measure(policy, calls, device=device))
        rows.append(row)
    for name, sampler, steps, kwargs in CUDA_COMPILED_CASES if device.startswith("cuda") else COMPILED_CASES:
        policy = _policy(name, BASE).to(device)
        policy.set_sampler(sampler, steps)
        policy.dit.compile_blocks(**kwargs)
        row = {"policy": f"{name} compiled {kwargs.get('mode', 'default')}", "process": "vp_cosine",
               "sampler": sampler, "steps": steps, "params_M": policy.num_parameters() / 1e6,
               "network_calls": policy.sampler.network_calls()}
        row.update(measure(policy, calls, warmup=20, device=device))
        rows.append(row)
    return rows


def main(device: str = "cpu") -> None:
    rows = run(device=device)
    write_result(result_name("latency", device), rows,
                 ["policy", "process", "sampler", "steps", "params_M", "median_ms", "p99_ms"],
                 {"batch": 1, "threads": torch.get_num_threads()}, device=device)


if __name__ == "__main__":
    main()
