"""Roll a policy out in its task's simulated envs and measure it.

Episodes run in lockstep batches of ``n_envs`` environments (in this process, or each in its own
subprocess with ``vector=async``), one batch row per env: each
step every env's observation goes to ``policy.select_action``, which keeps the observation
history (``n_obs_steps`` frames, the first repeated at episode start as diffusion_policy's
MultiStepWrapper does) and predicts a chunk for all rows every ``n_action_steps`` steps.

Seeds are ``EVAL_SEED_BASE + i``: disjoint from every collection seed by construction,
and checked against the seeds a dataset records.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dp.constants import EVAL_SEED_BASE
from dp.eval.env_batch import EnvBatch
from dp.eval.metrics import percentiles, wilson_interval


def eval_seeds(n: int, avoid: set[int] | None = None, base: int = EVAL_SEED_BASE) -> list[int]:
    seeds, s = [], base
    avoid = avoid or set()
    while len(seeds) < n:
        if s not in avoid:
            seeds.append(s)
        s += 1
    return seeds


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
    vector: str = "sync",
) -> dict:
    """Roll out ``policy`` on ``task`` once per seed through ``policy.select_action`` (the policy keeps
    the observation history). ``vector``: ``sync`` steps the ``n_envs`` envs in this process, ``async``
    each in its own subprocess (``EnvBatch``). Returns per-episode results and the latency of each
    prediction."""
    env_options = dict(env_options or {})
    episodes, latencies, frames_out = [], [], []
    fps = None  # the env's control rate (env.step calls per simulated second): videos play in real time
    bar = tqdm(total=len(seeds), desc=f"eval {task}", unit="ep", disable=not progress)
    policy.eval()
    batch = None
    for lo in range(0, len(seeds), n_envs):
        batch_seeds = seeds[lo : lo + n_envs]
        n = len(batch_seeds)
        # in-process envs are made fresh per batch; subprocesses are kept while the batch size holds (a spawn
        # costs about a second: each imports the simulator)
        if batch is not None and (vector == "sync" or batch.n != n):
            batch.close()
            batch = None
        batch = batch or EnvBatch(task, env_options, n, vector)
        instruction = batch.instruction
        fps = fps or env_fps(batch.probe)
        done, success, length, nonfinite = [False] * n, [False] * n, [0] * n, [False] * n
        last_info: list[dict] = [{} for _ in range(n)]
        record = [lo + i < n_videos for i in range(n)]
        frames = [[] for _ in range(n)]
        current = batch.reset(batch_seeds)  # each env's latest observation; a finished env keeps its last one
        for fr, frame in zip(frames, batch.render(record)):
            if frame is not None:
                fr.append(frame)
        limit = max_steps or batch.max_episode_steps
        policy.reset()
        # every env keeps its batch row for the whole episode (finished ones included, their actions
        # unused): the policy holds per-row state (observation history, episode noise)
        while not all(done) and max(length) < limit:
            step = {k: np.stack([o[k] for o in current]) for k in current[0] if isinstance(current[0][k], np.ndarray)}
            step["instruction"] = [instruction] * n
            predicts = policy.needs_prediction
            t0 = time.perf_counter()
            action = policy.select_action(step).float().cpu().numpy()
            if predicts:
                latencies.append(time.perf_counter() - t0)
            finite = np.isfinite(action.reshape(n, -1)).all(axis=1)
            for i in (i for i in range(n) if not done[i] and not finite[i]):
                nonfinite[i] = done[i] = True  # a failure, reported; the env never receives it
            active = [not d for d in done]
            for i, result in enumerate(batch.step(action, active)):
                if result is None:
                    continue
                current[i], _, terminated, truncated, info = result
                last_info[i] = info
                length[i] += 1
                success[i] = success[i] or bool(info.get("is_success", False))
                done[i] = bool(terminated or truncated or length[i] >= limit)
            for i, frame in enumerate(batch.render([r and a for r, a in zip(record, active)])):
                if frame is not None:
                    frames[i].append(frame)
        for i in range(n):
            scalars = {k: v.item() if isinstance(v, np.generic) else v for k, v in last_info[i].items()
                       if isinstance(v, (bool, int, float, str, np.number, np.bool_))}
            episodes.append({**scalars, "seed": batch_seeds[i], "success": bool(success[i]), "length": length[i],
                             "nonfinite": nonfinite[i]})
            if record[i]:
                frames_out.append((batch_seeds[i], success[i], frames[i]))
        bar.update(n)
        bar.set_postfix(success=f"{np.mean([e['success'] for e in episodes]):.0%}")
    if batch is not None:
        batch.close()
    bar.close()
    videos = []
    if video_dir is not None and frames_out:
        videos = write_videos(frames_out, Path(video_dir), task, fps=fps)
    return {"task": task, "episodes": episodes, "latency_s": latencies, "videos": videos, "n_envs": n_envs,
            "vector": vector}


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
        try:
            imageio.mimsave(path, [np.asarray(f) for f in frames], fps=fps, macro_block_size=1)
        except OSError as e:  # ffmpeg runs as a subprocess: a fork can fail (ENOMEM) after many envs
            warnings.warn(f"could not write {path} ({e}); the episodes' results are kept, the video is not.",
                          stacklevel=2)
            continue
        paths.append(str(path))
    return paths


EPISODE_KEYS = {"seed", "success", "length", "nonfinite", "is_success"}


def final_info_means(episodes: list[dict]) -> dict:
    """``mean_<key>`` over episodes of each numeric scalar an env reports in its last info (PushT's
    coverage and score, for one), where every episode has it."""
    keys = set.intersection(*(set(e) for e in episodes)) - EPISODE_KEYS if episodes else set()
    return {f"mean_{k}": float(np.mean([e[k] for e in episodes])) for k in sorted(keys)
            if all(isinstance(e[k], (int, float)) and not isinstance(e[k], bool) for e in episodes)}


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
            **final_info_means(r["episodes"]),
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
