"""How fast an image encoder learns where PushT's agent and T are: a supervised probe of its architecture.

    python scripts/pusht_pose_probe.py NAME CROP WIDTH STAGES STEPS [SEED]     # one variant, one seed
    python scripts/pusht_pose_probe.py --table                                 # bench/results/pusht_pose_probe.md

A policy from images must read the agent's position and the T's pose off the frame; a diffusion loss teaches
that slowly and noisily. Here ``dp.encoders.image.ImageEncoder`` (crop, width, stages as in the dit's
``policy.image_encoder``) plus a linear head regresses agent_pos and the T's 8 corners (18 numbers) from one
96 px frame of data/quality/pusht_img.zarr, with the dit's optimizer settings (AdamW, lr 5e-4, batch 64, bf16
autocast, random crops). Every 250 steps: RMSE in pixels of the 512 px table on the last 20 episodes (every
5th frame, centre crop). One thread. Each run appends to bench/results/pusht_pose_probe.json.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from dp.encoders.image import ImageEncoder

STORE = "data/quality/pusht_img.zarr"
OUT = Path("bench/results/pusht_pose_probe.json")


def probe(name: str, crop: int, width: int, stages: int, steps: int, seed: int = 0) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    z = zarr.open(STORE, mode="r")
    split = int(z["meta/episode_ends"][-21])  # the last 20 episodes are held out
    img = torch.as_tensor(z["data/img"][:]).permute(0, 3, 1, 2).contiguous()
    y = torch.as_tensor(np.concatenate([z["data/agent_pos"][:], z["data/keypoint"][:]], 1)) / 256 - 1
    enc = ImageEncoder(image_size=96, crop=crop, dim=192, width=width, stages=stages)
    head = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(192, 18))
    opt = torch.optim.AdamW([*enc.parameters(), *head.parameters()], lr=5e-4, weight_decay=1e-3, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(seed)
    val = torch.arange(split, len(img))[::5]

    def rmse_px() -> float:
        enc.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            pred = torch.cat([head(enc(img[val[i:i + 256]])).float() for i in range(0, len(val), 256)])
        enc.train()
        return float(((pred - y[val]) * 256).square().mean().sqrt())

    log, t0 = [], time.time()
    for step in range(1, steps + 1):
        idx = torch.randint(0, split, (64,), generator=gen)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = (head(enc(img[idx])).float() - y[idx]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0:
            log.append([step, rmse_px(), round(time.time() - t0)])
            print(name, log[-1], flush=True)
    return {"name": name, "crop": crop, "width": width, "stages": stages, "seed": seed, "log": log}


def table(rows: list[dict]) -> str:
    steps = sorted({s for r in rows for s, _, _ in r["log"]})
    head = "| variant | crop | width | stages | seed | " + " | ".join(f"{s}" for s in steps) + " | seconds |"
    lines = ["Held-out RMSE (px of 512) of agent_pos + the T's corners after N steps (`scripts/pusht_pose_probe.py`;",
             "one thread, other training processes on the 2-core AMD EPYC VM, so seconds compare loosely)", "",
             head, "|" + "---|" * (6 + len(steps))]
    for r in rows:
        by = {s: e for s, e, _ in r["log"]}
        lines.append(f"| {r['name']} | {r['crop']} | {r['width']} | {r['stages']} | {r['seed']} | "
                     + " | ".join(f"{by[s]:.1f}" if s in by else "-" for s in steps) + f" | {r['log'][-1][2]} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    rows = json.loads(OUT.read_text()) if OUT.exists() else []
    if sys.argv[1:] != ["--table"]:
        name, crop, width, stages, steps = sys.argv[1], *map(int, sys.argv[2:6])
        rows.append(probe(name, crop, width, stages, steps, int(sys.argv[6]) if len(sys.argv) > 6 else 0))
        OUT.write_text(json.dumps(rows, indent=1))
    OUT.with_suffix(".md").write_text(table(rows))
