"""MoDE inference: expert caching against the router path and against dense DiTs.

For each policy, at batch 1 with DDIM 10 steps: predict_action latency (median and p99,
rounds interleaved so that every variant sees the same machine load), FLOPs per
predict_action counted by ``torch.utils.flop_counter`` (matmuls and attention, as
counted, not estimated), total and active parameters.

Variants (Meta-World state shapes, language on, dim 192, action_patch 4):
- ``mode cached``: fused per-call experts, no router (``prepare_inference``);
- ``mode uncached``: the router and per-expert dispatch on every call;
- ``dit depth 4``: the baseline dense DiT, about the active parameters of mode's denoiser
  (its adaLN weights count as parameters but cost nothing per token: dp computes them
  once per level);
- ``dit depth 4 mlp x8``: a dense DiT whose MLP is as wide as mode's two active experts
  together, so the same matmuls per token;
- ``dit mode-block mlp x8``: the same dense MLP in MoDE's block (noise added + noise token,
  RMSNorm, QK-norm, no adaLN): the dense DiT with mode's active parameter count and
  architecture, so the difference to ``mode cached`` is what sparse experts cost;
- ``dit mode-block swiglu x8``: the same, with a dense SwiGLU (MoDE's own dense block) of
  that parameter count: its matrices have exactly the shapes of mode's two fused experts,
  so the difference to ``mode cached`` is only that mode's calls read different experts;
- ``dit depth 8``: the dense DiT with about mode's total parameters.

``matmul_MB``: distinct memory the matrix products of one prediction read (``traffic.py``;
weights, and the small activations). At batch 1 on a CPU a prediction's time follows it.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from dp.bench.common import result_name, sync, write_result
from dp.bench.traffic import MatmulReads
from dp.data import Normalizer
from dp.policies import DiTPolicy
from dp.policies.mode import MODE_DEFAULTS, MoDEPolicy

INSTRUCTIONS = ["push the puck to the goal", "open the drawer"]
SHAPE_META = {"action": [4], "obs": {"state": [39]}, "instructions": INSTRUCTIONS}
COMMON = {"dim": 192, "heads": 4, "action_patch": 4, "language": {"encoder": "builtin", "layers": 2},
          "sampler": {"name": "ddim", "steps": 10}}


MODE_BLOCK = {k: v for k, v in MODE_DEFAULTS.items() if k != "ffn"}


def _fit(policy):
    rng = np.random.default_rng(0)
    policy.set_normalizer(Normalizer.fit({"action": rng.normal(size=(100, 4)), "state": rng.normal(size=(100, 39))}))
    return policy.eval()


def variants(checkpoint: str | None = None) -> dict:
    """The policies compared. With ``checkpoint`` (a trained ``policy=mode`` run), both mode
    variants are its weights, so the routes are the trained ones (random routers pick more
    varied experts); the dense models keep random weights, which do not change their cost."""
    torch.manual_seed(0)
    if checkpoint is None:
        cached = _fit(MoDEPolicy(SHAPE_META, depth=4, **COMMON))
        uncached = _fit(MoDEPolicy(SHAPE_META, depth=4, **COMMON))
        uncached.load_state_dict(cached.state_dict())
    else:
        from dp.train.checkpoint import load_policy

        cached, uncached = load_policy(checkpoint).eval(), load_policy(checkpoint).eval()
        for p in (cached, uncached):
            p.set_sampler(COMMON["sampler"]["name"], COMMON["sampler"]["steps"])
    uncached.expert_cache = False
    return {
        "mode cached": cached,
        "mode uncached": uncached,
        "dit depth 4": _fit(DiTPolicy(SHAPE_META, depth=4, **COMMON)),
        "dit depth 4 mlp x8": _fit(DiTPolicy(SHAPE_META, depth=4, mlp_ratio=8.0, **COMMON)),
        "dit mode-block mlp x8": _fit(DiTPolicy(SHAPE_META, depth=4, mlp_ratio=8.0, **MODE_BLOCK, **COMMON)),
        "dit mode-block swiglu x8": _fit(DiTPolicy(SHAPE_META, depth=4, mlp_ratio=8.0, ffn="swiglu", **MODE_BLOCK,
                                                   **COMMON)),
        "dit depth 8": _fit(DiTPolicy(SHAPE_META, depth=8, **COMMON)),
    }


def flops_per_prediction(policy, obs) -> int:
    policy.predict_action(obs)  # builds caches first; they are not part of a prediction
    with FlopCounterMode(display=False) as counter:
        policy.predict_action(obs)
    return counter.get_total_flops()


def matmul_megabytes(policy, obs) -> float:
    policy.predict_action(obs)
    with MatmulReads() as reads:
        policy.predict_action(obs)
    return reads.megabytes


def run(rounds: int = 10, calls: int = 20, device: str = "cpu", checkpoint: str | None = None) -> list[dict]:
    policies = {k: p.to(device) for k, p in variants(checkpoint).items()}
    instruction = policies["mode cached"].instructions[0] if checkpoint else INSTRUCTIONS[0]
    obs = {"state": torch.randn(1, 2, 39), "instruction": [instruction]}
    samples = {k: [] for k in policies}
    for p in policies.values():
        for _ in range(5):
            p.predict_action(obs)
    for _ in range(rounds):
        for name, p in policies.items():
            for _ in range(calls):
                t0 = time.perf_counter()
                p.predict_action(obs)
                sync(device)
                samples[name].append(time.perf_counter() - t0)
    rows = []
    for name, p in policies.items():
        ms = np.asarray(samples[name]) * 1000
        rows.append({
            "policy": name, "median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)),
            "gflops": flops_per_prediction(p, obs) / 1e9,
            "matmul_MB": matmul_megabytes(p, obs),
            "params_M": p.num_parameters() / 1e6,
            "denoiser_params_M": sum(q.numel() for q in p.dit.parameters()) / 1e6,
            "denoiser_active_M": p.active_parameters(p.dit) / 1e6,
        })
    by = {r["policy"]: r for r in rows}
    speedup = by["mode uncached"]["median_ms"] / by["mode cached"]["median_ms"]
    for r in rows:
        r["vs_cached"] = r["median_ms"] / by["mode cached"]["median_ms"]
    print(f"expert caching speed-up at batch 1: {speedup:.2f}x")
    return rows


def main(device: str = "cpu", checkpoint: str | None = None) -> None:
    rows = run(device=device, checkpoint=checkpoint)
    name = "mode_inference" if checkpoint is None else "mode_inference_trained"
    write_result(result_name(name, device), rows,
                 ["policy", "median_ms", "p99_ms", "vs_cached", "gflops", "matmul_MB", "params_M", "denoiser_params_M",
                  "denoiser_active_M"],
                 {"batch": 1, "sampler": "ddim", "steps": 10, "threads": torch.get_num_threads(),
                  "checkpoint": checkpoint}, device=device)


if __name__ == "__main__":
    main()
