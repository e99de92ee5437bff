"""MoDE inference: expert caching against the router path and against dense DiTs.

For each policy, at batch 1 with DDIM 10 steps: predict_action latency (median and p99,
rounds interleaved so that every variant sees the same machine load), FLOPs per
predict_action counted by ``torch.utils.flop_counter`` (matmuls and attention, as
counted, not estimated), total and active parameters.

Variants (Meta-World state shapes, language on, dim 192, action_patch 4):
- ``mode cached``: fused per-call experts, no router (``policy.routes``, ``RouteCache``);
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

- ``mode cached, one expert pair per layer (diagnostic)``: not a model (``one_pair_per_layer``):
  the time mode would take if its calls did not read different experts.

``matmul_MB``: distinct memory the matrix products of one prediction read (``traffic.py``;
weights, and the small activations). At batch 1 on a CPU a prediction's time follows it.
``cold_median_ms``: the median with the caches evicted before every call (a 256 MB tensor
rewritten, as a simulator step between predictions would), fewer calls.
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from dp.bench.traffic import MatmulReads
from dp.core.moe import FusedExperts
from dp.data import Normalizer
from dp.policies import DiTPolicy
from dp.policies.mode import MODE_DEFAULTS, MoDEPolicy
from dp.results import result_name, sync, write_result

INSTRUCTIONS = ["push the puck to the goal", "open the drawer"]
SHAPE_META = {"action": [4], "obs": {"state": [39]}, "instructions": INSTRUCTIONS}
COMMON = {"dim": 192, "heads": 4, "action_patch": 4, "language": {"encoder": "builtin", "layers": 2},
          "sampler": {"name": "ddim", "steps": 10}}


MODE_BLOCK = {k: v for k, v in MODE_DEFAULTS.items() if k != "ffn"}
ONE_PAIR = "mode cached, one expert pair per layer (diagnostic)"
FLUSH_BYTES = 256 * 2**20  # rewritten before each cold call: more than this VM's last-level cache holds


def _fit(policy):
    rng = np.random.default_rng(0)
    policy.set_normalizer(Normalizer.fit({"action": rng.normal(size=(100, 4)), "state": rng.normal(size=(100, 39))}))
    return policy.eval()


def variants(checkpoint: str | None = None) -> dict:
    """The policies compared. With ``checkpoint`` (a trained ``policy=mode`` run), both mode
    variants are its weights, so the routes are the trained ones (random routers pick more
    varied experts); the dense models keep random weights, which do not change their cost,
    and take the checkpoint's noise process, whose preconditioning costs ops every call."""
    torch.manual_seed(0)
    common = dict(COMMON)
    if checkpoint is None:
        cached = _fit(MoDEPolicy(SHAPE_META, depth=4, **common))
        uncached = _fit(MoDEPolicy(SHAPE_META, depth=4, **common))
        uncached.load_state_dict(cached.state_dict())
    else:
        from dp.checkpoint import load_config
        from dp.policies.registry import load_policy

        cached, uncached = load_policy(checkpoint).eval(), load_policy(checkpoint).eval()
        for p in (cached, uncached):
            p.set_sampler(common["sampler"]["name"], common["sampler"]["steps"])
        common["process"] = load_config(checkpoint)["policy"].get("process")
    uncached.routes.enabled = False
    return {
        "mode cached": cached,
        "mode uncached": uncached,
        ONE_PAIR: one_pair_per_layer(copy.deepcopy(cached)),
        "dit depth 4": _fit(DiTPolicy(SHAPE_META, depth=4, **common)),
        "dit depth 4 mlp x8": _fit(DiTPolicy(SHAPE_META, depth=4, mlp_ratio=8.0, **common)),
        "dit mode-block mlp x8": _fit(DiTPolicy(SHAPE_META, depth=4, mlp_ratio=8.0, **MODE_BLOCK, **common)),
        "dit mode-block swiglu x8": _fit(DiTPolicy(SHAPE_META, depth=4, mlp_ratio=8.0, ffn="swiglu", **MODE_BLOCK,
                                                   **common)),
        "dit depth 8": _fit(DiTPolicy(SHAPE_META, depth=8, **common)),
    }


def one_pair_per_layer(policy: MoDEPolicy) -> MoDEPolicy:
    """Diagnostic, not a model: every cached call of a layer runs the experts of one of its
    calls (the first whose experts are one window of the bank), so a prediction reads one
    expert pair per layer, as a dense layer reads one MLP. Its time against ``mode cached``
    is what reading different experts across calls costs; its outputs are not mode's."""
    policy.routes.prepare(policy.sampler, policy.process, policy.device)
    for ffn in policy.routes.ffns():
        calls = list(ffn.step_cache.values())
        pair = next((c for c in calls if isinstance(c, FusedExperts)), calls[0])
        ffn.step_cache = {key: pair for key in ffn.step_cache}
    return policy


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


def _time(policies: dict, obs, rounds: int, calls: int, device: str, flush: torch.Tensor | None = None) -> dict:
    """Per policy, the seconds of each predict_action; rounds interleave the policies so that
    each sees the same machine load. With ``flush``, the tensor is rewritten (outside the
    timer) before every call, which evicts the caches as a simulator step would."""
    samples = {k: [] for k in policies}
    for _ in range(rounds):
        for name, p in policies.items():
            for _ in range(calls):
                if flush is not None:
                    flush.add_(1.0)
                    sync(device)
                t0 = time.perf_counter()
                p.predict_action(obs)
                sync(device)
                samples[name].append(time.perf_counter() - t0)
    return samples


def run(rounds: int = 10, calls: int = 20, device: str = "cpu", checkpoint: str | None = None,
        cold_rounds: int = 5, cold_calls: int = 5) -> list[dict]:
    policies = {k: p.to(device) for k, p in variants(checkpoint).items()}
    instruction = policies["mode cached"].instructions[0] if checkpoint else INSTRUCTIONS[0]
    obs = {"state": torch.randn(1, 2, 39), "instruction": [instruction]}
    for p in policies.values():
        for _ in range(5):
            p.predict_action(obs)
    samples = _time(policies, obs, rounds, calls, device)
    flush = torch.zeros(FLUSH_BYTES // 4, device=device)
    cold = _time(policies, obs, cold_rounds, cold_calls, device, flush)
    del flush
    rows = []
    for name, p in policies.items():
        ms = np.asarray(samples[name]) * 1000
        rows.append({
            "policy": name, "median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)),
            "cold_median_ms": float(np.median(cold[name]) * 1000),
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
                 ["policy", "median_ms", "p99_ms", "vs_cached", "cold_median_ms", "gflops", "matmul_MB", "params_M",
                  "denoiser_params_M",
                  "denoiser_active_M"],
                 {"batch": 1, "sampler": "ddim", "steps": 10, "threads": torch.get_num_threads(),
                  "checkpoint": checkpoint}, device=device)


if __name__ == "__main__":
    main()
