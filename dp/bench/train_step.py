"""Training step time and samples/s for the default policies at Meta-World push shapes.

A step is one optimizer update: forward, loss, backward, AdamW, EMA (the Trainer's
work minus data loading, which dp-bench dataset measures separately).
"""
from __future__ import annotations


import numpy as np
import torch

from dp.bench.common import median_time, write_result
from dp.bench.latency import _policy
from dp.train.ema import EMA
from dp.train.schedule import param_groups

CASES = [("dit", {}, 256), ("dit", {}, 64), ("mlp_bc", {}, 256)]


def run(repeats: int = 10) -> list[dict]:
    rows = []
    for name, overrides, batch_size in CASES:
        policy = _policy(name, overrides).train()
        ema = EMA(policy)
        opt = torch.optim.AdamW(param_groups(policy, 1e-3), lr=1e-4)
        batch = {"obs": {"state": torch.randn(batch_size, policy.n_obs_steps, 39)},
                 "action": torch.randn(batch_size, policy.horizon, 4)}
        step = [0]

        def one_step():
            loss = policy.compute_loss(batch)["loss"]
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            opt.step()
            step[0] += 1
            ema.update(policy, step[0])

        t, _ = median_time(one_step, repeats, warmup=2)
        rows.append({"policy": name, "batch": batch_size, "step_ms": t * 1000, "samples_per_s": batch_size / t,
                     "params_M": policy.num_parameters() / 1e6})
    return rows


def main() -> None:
    write_result("train_step", run(), ["policy", "batch", "params_M", "step_ms", "samples_per_s"],
                 {"threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
