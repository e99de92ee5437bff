"""Training windows from an image store larger than memory allows: in memory against lazy reads.

    dp-bench lazy_frames

A zarr store of random 84x84 frames (Meta-World's image shape; ``EPISODES`` x ``LENGTH`` steps, about
250 MB as uint8) is written once; then, each in a fresh process, ``SequenceDataset`` loads it whole
(``image_cache_mb=null``) or reads its frames lazily with a ``CACHE_MB`` cache, and draws ``BATCHES``
random batches of 256 windows. Reported: the process's peak resident memory (and its growth over the
process after imports) and windows/s, both paths in one run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from dp.results import write_result

EPISODES, LENGTH = 120, 100
CACHE_MB = 32
BATCHES = 20
BATCH = 256

_MEASURE = """
import json, resource, sys, time
import numpy as np
from dp.data import SequenceDataset
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
cache = None if sys.argv[2] == "none" else float(sys.argv[2])
ds = SequenceDataset(sys.argv[1], horizon=16, n_obs_steps=2, n_action_steps=8,
                     obs_keys={"agent_pos": "agent_pos", "image": "img"}, image_cache_mb=cache)
rng = np.random.default_rng(0)
batches = [rng.integers(0, len(ds), %d) for _ in range(%d)]
ds.get_batch(batches[0])
t0 = time.perf_counter()
for idx in batches:
    ds.get_batch(idx)
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"base_mb": base, "peak_mb": peak, "windows_per_s": len(batches) * %d / seconds,
                  "lazy": ds.lazy_keys}))
""" % (BATCH, BATCHES, BATCH)


def write_store(path: Path) -> float:
    """The store (one episode at a time, as dp-collect writes); its frames' size in MB as uint8."""
    from dp.data import ReplayBuffer

    rng = np.random.default_rng(0)
    buf = ReplayBuffer.create(path)
    for _ in range(EPISODES):
        buf.add_episode({"action": rng.uniform(-1, 1, (LENGTH, 4)).astype(np.float32),
                         "agent_pos": rng.normal(size=(LENGTH, 4)).astype(np.float32),
                         "img": rng.integers(0, 256, (LENGTH, 84, 84, 3), dtype=np.uint8)})
    return EPISODES * LENGTH * 84 * 84 * 3 / 2**20


def measure(store: Path, cache: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(store), cache], capture_output=True, text=True,
                         env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(device: str = "cpu") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "frames.zarr"
        frames_mb = write_store(store)
        rows = []
        for label, cache in (("in memory (image_cache_mb=null)", "none"), (f"lazy, {CACHE_MB} MB cache", str(CACHE_MB))):
            r = measure(store, cache)
            rows.append({"path": label, "frames_mb": round(frames_mb, 1), "peak_rss_mb": round(r["peak_mb"], 1),
                         "rss_growth_mb": round(r["peak_mb"] - r["base_mb"], 1),
                         "windows_per_s": round(r["windows_per_s"], 1)})
    rows[1]["memory_vs_in_memory"] = round(rows[1]["rss_growth_mb"] / rows[0]["rss_growth_mb"], 3)
    rows[1]["speed_vs_in_memory"] = round(rows[1]["windows_per_s"] / rows[0]["windows_per_s"], 3)
    path = write_result("lazy_frames", rows, ["path", "frames_mb", "peak_rss_mb", "rss_growth_mb", "windows_per_s",
                                              "memory_vs_in_memory", "speed_vs_in_memory"],
                        extra={"episodes": EPISODES, "length": LENGTH, "cache_mb": CACHE_MB, "batch": BATCH,
                               "batches": BATCHES})
    for r in rows:
        print(f"{r['path']}: peak RSS {r['peak_rss_mb']} MB (+{r['rss_growth_mb']} MB), {r['windows_per_s']} windows/s")
    print(f"wrote {path}")
