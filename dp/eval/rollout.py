"""Roll a policy out in its task's simulated envs and measure it.

Episodes run in lockstep batches of ``n_envs`` environments: one batched
``predict_action`` call serves every live env, and its ``n_action_steps`` executed
actions are applied before the next call. Observation history is kept per env
(``n_obs_steps`` frames, the first frame repeated at episode start as
diffusion_policy's MultiStepWrapper does).

Seeds are ``EVAL_SEED_BASE + i``: disjoint from every collection seed by construction,
and checked against the seeds a dataset records.
"""
from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dp.constants import EVAL_SEED_BASE
from dp.eval.metrics import percentiles, wilson_interval


def eval_seeds(n: int, avoid: set[int] | None = None, base: int = EVAL_SEED_BASE) -> list[int]:
    seeds, s = [], base
    avoid = avoid or set()
    while len(seeds) < n:
        if s not in avoid:
            seeds.append(s)
        s += 1
    return seeds


def stack_obs(histories: list[deque], keys: list[str]) -> dict[str, np.ndarray]:
    """Per-env deques of obs dicts -> {key: [B, To, ...]}; images HWC -> CHW."""
    out = {}
    for k in keys:
        arr = np.stack([np.stack([o[k] for o in h]) for h in histories])
        out[k] = np.moveaxis(arr, -1, -3) if arr.ndim == 5 else arr
    return out


def run_episodes(
    policy,
    task: str,
    seeds: list[int],
    env_options: dict | None = None,
    n_envs: int = 10,
    max_steps: int | None = None,
    n_videos: int = 0,
    video_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Roll out ``policy`` on ``task`` once per seed. Returns per-episode results + latencies."""
    import envs

    env_options = dict(env_options or {})
    obs_keys = policy.obs_encoder.keys if hasattr(policy, "obs_encoder") else ["state"]
    episodes, latencies, frames_out = [], [], []
    fps = None  # the env's control rate (env.step calls per simulated second): videos play in real time
    bar = tqdm(total=len(seeds), desc=f"eval {task}", unit="ep", disable=not progress)
    policy.eval()
    for lo in range(0, len(seeds), n_envs):
        batch_seeds = seeds[lo : lo + n_envs]
        env_list = [envs.make(task, **env_options) for _ in batch_seeds]
        instruction = getattr(env_list[0].unwrapped, "instruction", "")
        fps = fps or env_fps(env_list[0])
        hist, done, success, length = [], [False] * len(env_list), [False] * len(env_list), [0] * len(env_list)
        nonfinite = [False] * len(env_list)  # the episode ended on a NaN/inf prediction (never sent to the env)
        last_info: list[dict] = [{} for _ in env_list]
        record = [lo + i < n_videos for i in range(len(env_list))]
        frames = [[] for _ in env_list]
        for env, seed, rec, fr in zip(env_list, batch_seeds, record, frames):
            obs, _ = env.reset(seed=seed)
            hist.append(deque([obs] * policy.n_obs_steps, maxlen=policy.n_obs_steps))
            if rec:
                fr.append(env.render())
        limit = max_steps or min(getattr(e.unwrapped, "max_episode_steps", 10_000) or 10_000 for e in env_list)
        policy.reset()
        while not all(done) and max(length) < limit:
            # every env keeps its batch row for the whole episode (finished ones included, their
            # actions unused): a policy may hold per-row state such as its episode noise
            live = [i for i, d in enumerate(done) if not d]
            obs = stack_obs(hist, obs_keys)
            obs = {k: torch.from_numpy(v) for k, v in obs.items()}
            obs["instruction"] = [instruction] * len(hist)
            t0 = time.perf_counter()
            chunk = policy.executed_actions(policy.predict_action(obs)).float().cpu().numpy()
            latencies.append(time.perf_counter() - t0)
            finite = np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)
            for i in live:
                if not finite[i]:  # a failure, reported; the env never receives it
                    nonfinite[i] = done[i] = True
                    continue
                for a in chunk[i]:
                    obs_i, _, terminated, truncated, info = env_list[i].step(a)
                    hist[i].append(obs_i)
                    last_info[i] = info
                    length[i] += 1
                    if record[i]:
                        frames[i].append(env_list[i].render())
                    if info.get("is_success", False):
                        success[i] = True
                    if terminated or truncated or length[i] >= limit:
                        done[i] = True
                        break
        for i, env in enumerate(env_list):
            scalars = {k: v for k, v in last_info[i].items() if isinstance(v, (bool, int, float, str, np.number))}
            episodes.append({**scalars, "seed": batch_seeds[i], "success": bool(success[i]), "length": length[i],
                             "nonfinite": nonfinite[i]})
            if record[i]:
                frames_out.append((batch_seeds[i], success[i], frames[i]))
            env.close()
        bar.update(len(env_list))
        bar.set_postfix(success=f"{np.mean([e['success'] for e in episodes]):.0%}")
    bar.close()
    videos = []
    if video_dir is not None and frames_out:
        videos = write_videos(frames_out, Path(video_dir), task, fps=fps)
    return {"task": task, "episodes": episodes, "latency_s": latencies, "videos": videos, "n_envs": n_envs}


def env_fps(env) -> float:
    """Frames per second at which one frame per ``env.step`` plays in real time: the env's
    ``metadata["render_fps"]``, which every env in ``envs`` sets to its control rate
    (Meta-World 80 = 1 / (frame_skip 5 * timestep 2.5 ms), robosuite CONTROL_FREQ, Push-T 10)."""
    fps = (getattr(env, "metadata", None) or {}).get("render_fps")
    if fps is None:
        fps = (getattr(env.unwrapped, "metadata", None) or {}).get("render_fps")
    if not fps or fps <= 0:
        raise ValueError(f"{env!r} has no positive metadata['render_fps']; cannot time its video.")
    return fps


def write_videos(frames_out, video_dir: Path, task: str, *, fps: float) -> list[str]:
    """One mp4 per recorded episode, ``fps`` frames per second (one frame per env step:
    pass the env's control rate, :func:`env_fps`, for real-time playback)."""
    import imageio.v2 as imageio

    video_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed, ok, frames in frames_out:
        path = video_dir / f"{task}_seed{seed}_{'success' if ok else 'fail'}.mp4"
        imageio.mimsave(path, [np.asarray(f) for f in frames], fps=fps, macro_block_size=1)
        paths.append(str(path))
    return paths


def summarize(results: list[dict]) -> dict:
    """Per-task and mean success (Wilson 95%), episode lengths, prediction latency."""
    per_task = {}
    all_lat = []
    for r in results:
        succ = [e["success"] for e in r["episodes"]]
        k, n = int(sum(succ)), len(succ)
        lo, hi = wilson_interval(k, n)
        per_task[r["task"]] = {
            "success_rate": k / max(n, 1),
            "successes": k,
            "episodes": n,
            "wilson95": [lo, hi],
            "mean_length": float(np.mean([e["length"] for e in r["episodes"]])) if n else float("nan"),
            "nonfinite_episodes": sum(e.get("nonfinite", False) for e in r["episodes"]),
            "episode_results": r["episodes"],  # per episode: seed, success, length, nonfinite, final info scalars
        }
        all_lat += r["latency_s"]
    rates = [v["success_rate"] for v in per_task.values()]
    total_k = sum(v["successes"] for v in per_task.values())
    total_n = sum(v["episodes"] for v in per_task.values())
    lat = percentiles([x * 1000 for x in all_lat])
    return {
        "success_rate": float(np.mean(rates)) if rates else float("nan"),
        "wilson95": list(wilson_interval(total_k, total_n)),
        "episodes": total_n,
        # episodes ended by a NaN/inf prediction (counted as failures, the action never sent)
        "nonfinite_episodes": sum(v["nonfinite_episodes"] for v in per_task.values()),
        "per_task": per_task,
        "latency_ms": {"median": lat["p50"], "p99": lat["p99"], "calls": len(all_lat),
                       "batch": results[0]["n_envs"] if results else 0},
    }
