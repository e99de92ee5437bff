"""Training step time and samples/s for the default policies at Meta-World push shapes, and the
dit at PushT image shapes (agent_pos + one 96 px camera, 2 frames, dp/configs/policy/dit.yaml's
image encoder) in both conv layouts, fp32 and bf16 autocast: the ``ratio_to_first`` column is each
image row's step time over the first image row's (fp32, contiguous), measured in the same run.

A step is one optimizer update: forward, loss, backward, AdamW, EMA (the Trainer's
work minus data loading, which dp-bench dataset measures separately).
"""
from __future__ import annotations


import numpy as np
import torch

from dp.bench.latency import _policy
from dp.data import Normalizer
from dp.encoders.image import ImageEncoder
from dp.policies import DiTPolicy
from dp.results import median_time, result_name, sync, write_result
from dp.train.ema import EMA
from dp.train.schedule import param_groups

# meanflow: the same dit, trained with MeanFlow (a JVP per step: its cost against the dit's is the ratio)
CASES = [("dit", {}, 256, False), ("dit", {}, 64, False), ("meanflow", {}, 256, False), ("meanflow", {}, 64, False),
         ("mlp_bc", {}, 256, False)]
CUDA_CASES = [("dit", {}, 256, False), ("dit", {}, 256, True), ("dit", {}, 1024, True), ("mlp_bc", {}, 256, False)]
IMAGE_META = {"action": [2], "obs": {"agent_pos": [2], "image": [3, 96, 96]}}  # PushT from images
# (conv layout, bf16) at batch 64: the first row is the reference of ratio_to_first
IMAGE_CASES = [(torch.contiguous_format, False), (torch.channels_last, False), (torch.contiguous_format, True),
               (torch.channels_last, True)]


def _image_policy(layout: torch.memory_format) -> DiTPolicy:
    """The dit of ``dp-train task=pusht task.obs=image`` (5.7M parameters), its convs in ``layout``."""
    policy = DiTPolicy(IMAGE_META, action_patch=4, image_encoder={"crop": 76, "width": 32, "stages": 4})
    rng = np.random.default_rng(0)
    policy.set_normalizer(Normalizer.fit({"action": rng.uniform(0, 512, (100, 2)),
                                          "agent_pos": rng.uniform(0, 512, (100, 2))}))
    for m in policy.modules():
        if isinstance(m, ImageEncoder):
            m.set_memory_format(layout)
    return policy


def _time_steps(policy, batch: dict, bf16: bool, repeats: int, device: str) -> float:
    """Median seconds of one optimizer update (forward, loss, backward, clip, AdamW, EMA) on ``batch``."""
    ema = EMA(policy)
    opt = torch.optim.AdamW(param_groups(policy, 1e-3), lr=1e-4)
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

    return median_time(one_step, repeats, warmup=2)[0]


def run(repeats: int = 10, device: str = "cpu") -> list[dict]:
    rows = []
    for name, overrides, batch_size, bf16 in CUDA_CASES if device.startswith("cuda") else CASES:
        policy = _policy(name, overrides).to(device).train()
        batch = {"obs": {"state": torch.randn(batch_size, policy.n_obs_steps, 39, device=device)},
                 "action": torch.randn(batch_size, policy.horizon, 4, device=device)}
        t = _time_steps(policy, batch, bf16, repeats, device)
        rows.append({"policy": name, "batch": batch_size, "bf16": bf16, "step_ms": t * 1000,
                     "samples_per_s": batch_size / t, "params_M": policy.num_parameters() / 1e6})
    gen = torch.Generator().manual_seed(0)
    for layout, bf16 in IMAGE_CASES:
        policy = _image_policy(layout).to(device).train()
        b, to = 64, policy.n_obs_steps
        batch = {"obs": {"agent_pos": torch.rand(b, to, 2, generator=gen).to(device) * 512,
                         "image": torch.randint(0, 256, (b, to, 3, 96, 96), dtype=torch.uint8, generator=gen).to(device)},
                 "action": (torch.rand(b, policy.horizon, 2, generator=gen) * 512).to(device)}
        t = _time_steps(policy, batch, bf16, repeats, device)
        rows.append({"policy": "dit pusht image", "batch": b, "bf16": bf16, "layout": str(layout).split(".")[-1],
                     "step_ms": t * 1000, "samples_per_s": b / t, "params_M": policy.num_parameters() / 1e6})
    dit = {r["batch"]: r["step_ms"] for r in rows if r["policy"] == "dit" and not r["bf16"]}
    for r in rows:
        if r["policy"] == "meanflow" and r["batch"] in dit:
            r["ratio_to_dit"] = r["step_ms"] / dit[r["batch"]]
    first = next(r["step_ms"] for r in rows if r["policy"] == "dit pusht image")
    for r in rows:
        if r["policy"] == "dit pusht image":
            r["ratio_to_first"] = r["step_ms"] / first
    return rows


def main(device: str = "cpu") -> None:
    write_result(result_name("train_step", device), run(device=device),
                 ["policy", "batch", "bf16", "layout", "params_M", "step_ms", "samples_per_s", "ratio_to_dit",
                  "ratio_to_first"],
                 {"threads": torch.get_num_threads()}, device=device)


if __name__ == "__main__":
    main()
