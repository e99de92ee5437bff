"""Evaluation throughput: episodes per second of dp-eval with 1 and 2 environments, in this process
and each in its own subprocess (``vector=async``, gymnasium's AsyncVectorEnv).

    dp-bench eval_envs --checkpoint RUN      # default: runs/mw_push_core3, else an error saying so

Each configuration evaluates the same seeds; the three run interleaved, ``ROUNDS`` times, and the
median wall time per configuration gives episodes/s and the ratio to one in-process env. Writes
bench/results/eval_envs_<run>.json.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from dp.errors import ConfigError
from dp.results import write_result

CONFIGS = [(1, "sync"), (2, "sync"), (2, "async")]
EPISODES = 6
ROUNDS = 3
DEFAULT_CHECKPOINT = "runs/mw_push_core3"


def run(checkpoint: str, episodes: int = EPISODES, rounds: int = ROUNDS, device: str = "cpu") -> list[dict]:
    from dp.eval.evaluate import evaluate_checkpoint

    times = {c: [] for c in CONFIGS}
    success = {}
    for _ in range(rounds):
        for n_envs, vector in CONFIGS:
            t0 = time.perf_counter()
            s = evaluate_checkpoint(checkpoint, n_episodes=episodes, n_envs=n_envs, n_videos=0, device=device,
                                    progress=False, vector=vector, output_dir=str(Path("/tmp") / "dp_eval_envs"))
            times[(n_envs, vector)].append(time.perf_counter() - t0)
            success[(n_envs, vector)] = s["success_rate"]
    base = episodes / float(np.median(times[CONFIGS[0]]))
    rows = []
    for n_envs, vector in CONFIGS:
        rate = episodes / float(np.median(times[(n_envs, vector)]))
        rows.append({"n_envs": n_envs, "vector": vector, "episodes": episodes, "median_s": float(np.median(
            times[(n_envs, vector)])), "episodes_per_s": rate, "ratio_to_1_sync": rate / base,
            "success_rate": success[(n_envs, vector)]})
    return rows


def main(device: str = "cpu", checkpoint: str | None = None) -> None:
    checkpoint = checkpoint or DEFAULT_CHECKPOINT
    if not Path(checkpoint).exists():
        raise ConfigError(f"dp-bench eval_envs times dp-eval on a trained checkpoint; {checkpoint} does not exist. "
                          f"Pass --checkpoint RUN.")
    rows = run(checkpoint, device=device)
    path = write_result(f"eval_envs_{Path(checkpoint).resolve().name}", rows, ["n_envs", "vector", "episodes", "median_s", "episodes_per_s",
                                           "ratio_to_1_sync", "success_rate"],
                        extra={"checkpoint": checkpoint, "rounds": ROUNDS})
    for r in rows:
        print(f"n_envs {r['n_envs']} {r['vector']:5s}: {r['episodes_per_s']:.3f} episodes/s "
              f"({r['ratio_to_1_sync']:.2f}x one in-process env)")
    print(f"wrote {path}")
