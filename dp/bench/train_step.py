"""Training step time and samples/s for the default policies at Meta-World push shapes.

A step is one optimizer update: forward, loss, backward, AdamW, EMA (the Trainer's
work minus data loading, which dp-bench dataset measures separately). AdamW is fused, as the Trainer's;
the ``fused=False`` rows time torch's per-tensor AdamW on the same policy in the same run, and
``fused_speedup`` is their step time over the fused row's (``adamw_ms``: the update alone).
"""
from __future__ import annotations

import statistics
import time

import torch

from dp.bench.latency import _policy
from dp.results import result_name, sync, write_result
from dp.train.ema import EMA
from dp.train.schedule import adamw

# (policy, overrides, batch, bf16, fused AdamW). meanflow: the same dit, trained with MeanFlow (a JVP per step:
# its cost against the dit's is the ratio)
CASES = [("dit", {}, 256, False, True), ("dit", {}, 64, False, True), ("dit", {}, 64, False, False),
         ("meanflow", {}, 256, False, True), ("meanflow", {}, 64, False, True), ("mlp_bc", {}, 256, False, True)]
CUDA_CASES = [("dit", {}, 256, False, True), ("dit", {}, 256, False, False), ("dit", {}, 256, True, True),
              ("dit", {}, 1024, True, True), ("mlp_bc", {}, 256, False, True)]


def _step_fn(name: str, overrides: dict, batch_size: int, bf16: bool, fused: bool, device: str):
    """(policy, one training step of it on a random Meta-World-push-shaped batch, the seconds each AdamW
    update took)."""
    policy = _policy(name, overrides).to(device).train()
    ema = EMA(policy)
    opt = adamw(policy, 1e-4, 1e-3, fused=fused)
    batch = {"obs": {"state": torch.randn(batch_size, policy.n_obs_steps, 39, device=device)},
             "action": torch.randn(batch_size, policy.horizon, 4, device=device)}
    step, adamw_s = [0], []

    def one_step():
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            loss = policy.compute_loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        sync(device)
        t0 = time.perf_counter()
        opt.step()
        sync(device)
        adamw_s.append(time.perf_counter() - t0)
        step[0] += 1
        ema.update(policy, step[0])
        sync(device)

    return policy, one_step, adamw_s


def run(rounds: int = 5, steps: int = 3, device: str = "cpu") -> list[dict]:
    """Each case's median step time; rounds interleave the cases (``steps`` timed steps each per round) so
    that every case sees the same machine load and the ratios compare like with like."""
    cases = CUDA_CASES if device.startswith("cuda") else CASES
    built = [_step_fn(*case, device) for case in cases]
    for _, one_step, adamw_s in built:
        for _ in range(2):  # warm-up
            one_step()
        adamw_s.clear()
    samples = [[] for _ in cases]
    for _ in range(rounds):
        for i, (_, one_step, _) in enumerate(built):
            for _ in range(steps):
                t0 = time.perf_counter()
                one_step()
                samples[i].append(time.perf_counter() - t0)
    rows = []
    for (name, _, batch_size, bf16, fused), (policy, _, adamw_s), times in zip(cases, built, samples):
        t = statistics.median(times)
        rows.append({"policy": name, "batch": batch_size, "bf16": bf16, "fused": fused, "step_ms": t * 1000,
                     "adamw_ms": statistics.median(adamw_s) * 1000,
                     "samples_per_s": batch_size / t, "params_M": policy.num_parameters() / 1e6})
    dit = {r["batch"]: r["step_ms"] for r in rows if r["policy"] == "dit" and not r["bf16"] and r["fused"]}
    for r in rows:
        if r["policy"] == "meanflow" and r["batch"] in dit:
            r["ratio_to_dit"] = r["step_ms"] / dit[r["batch"]]
        if r["policy"] == "dit" and not r["bf16"] and not r["fused"] and r["batch"] in dit:
            r["fused_speedup"] = r["step_ms"] / dit[r["batch"]]
    return rows


def main(device: str = "cpu") -> None:
    write_result(result_name("train_step", device), run(device=device),
                 ["policy", "batch", "bf16", "fused", "params_M", "step_ms", "adamw_ms", "samples_per_s", "ratio_to_dit",
                  "fused_speedup"],
                 {"threads": torch.get_num_threads()}, device=device)


if __name__ == "__main__":
    main()
