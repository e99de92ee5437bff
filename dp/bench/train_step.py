"""Training step time and samples/s for the default policies at Meta-World push shapes.

A step is one optimizer update: forward, loss, backward, AdamW, EMA (the Trainer's
work minus data loading, which dp-bench dataset measures separately).
"""
from __future__ import annotations


import numpy as np
import torch

from dp.bench.latency import _policy
from dp.results import median_time, result_name, sync, write_result
from dp.train.ema import EMA
from dp.train.schedule import param_groups

# meanflow: the same dit, trained with MeanFlow (a JVP per step: its cost against the dit's is the ratio)
CASES = [("dit", {}, 256, False), ("dit", {}, 64, False), ("meanflow", {}, 256, False), ("meanflow", {}, 64, False),
         ("mlp_bc", {}, 256, False)]
CUDA_CASES = [("dit", {}, 256, False), ("dit", {}, 256, True), ("dit", {}, 1024, True), ("mlp_bc", {}, 256, False)]


def run(repeats: int = 10, device: str = "cpu") -> list[dict]:
    rows = []
    for name, overrides, batch_size, bf16 in CUDA_CASES if device.startswith("cuda") else CASES:
        policy = _policy(name, overrides).to(device).train()
        ema = EMA(policy)
        opt = torch.optim.AdamW(param_groups(policy, 1e-3), lr=1e-4)
        batch = {"obs": {"state": torch.randn(batch_size, policy.n_obs_steps, 39, device=device)},
                 "action": torch.randn(batch_size, policy.horizon, 4, device=device)}
        step = [0]

        def one_step():
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                loss = policy.compute_loss(batch)["loss"]
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            opt.step()
            step[0] += 1
            ema.update(policy, step[0])
            sync(device)

        t, _ = median_time(one_step, repeats, warmup=2)
        rows.append({"policy": name, "batch": batch_size, "bf16": bf16, "step_ms": t * 1000,
                     "samples_per_s": batch_size / t, "params_M": policy.num_parameters() / 1e6})
    dit = {r["batch"]: r["step_ms"] for r in rows if r["policy"] == "dit" and not r["bf16"]}
    for r in rows:
        if r["policy"] == "meanflow" and r["batch"] in dit:
            r["ratio_to_dit"] = r["step_ms"] / dit[r["batch"]]
    return rows


def main(device: str = "cpu") -> None:
    write_result(result_name("train_step", device), run(device=device),
                 ["policy", "batch", "bf16", "params_M", "step_ms", "samples_per_s", "ratio_to_dit"],
                 {"threads": torch.get_num_threads()}, device=device)


if __name__ == "__main__":
    main()
