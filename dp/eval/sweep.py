"""Samplers compared on one checkpoint: success from rollouts, and compute per executed action.

    python -m dp.eval.sweep runs/mw_push_rt ddim:10 ddim:2 streaming:2 truncated:2 --episodes 50

For each ``name:steps`` sampler: success over ``--episodes`` rollouts (dp-eval's runner and
seeds), and at batch 1 on a real observation: FLOPs of one ``predict_action`` counted by
``torch.utils.flop_counter`` (streaming: a warm call, after the episode's first), network
passes per call (a pass over K anchors at once counts once; its rows are reported), the
median latency of a call, and all three divided by the actions a call executes
(n_action_steps). Writes bench/results/<name>.json and .md with the machine.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from dp.checkpoint import checkpoint_tasks, load_config, resolve
from dp.errors import ConfigError
from dp.eval.evaluate import evaluate_checkpoint
from dp.policies.registry import load_policy
from dp.results import sync, write_result


def parse_spec(spec: str) -> dict:
    """'ddim:10' -> {"name": "ddim", "steps": 10}; extra options as 'truncated:2:fallback_score=0.1'."""
    name, *rest = spec.split(":")
    if not rest:
        raise ConfigError(f"sampler spec must be name:steps[:key=value...], got {spec!r}.")
    out = {"name": name, "steps": int(rest[0])}
    for kv in rest[1:]:
        key, value = kv.split("=", 1)
        out[key] = float(value) if value.replace(".", "", 1).isdigit() else value
    return out


def real_obs(policy, task: str, env_options: dict, seed: int = 10**9) -> dict:
    """One batch-1 observation from the task's env after reset (history = the first frame repeated)."""
    from dp import envs

    env = envs.make(task, **env_options)
    obs, _ = env.reset(seed=seed)
    history = policy.new_history()
    history.push_one({**obs, "instruction": getattr(env.unwrapped, "instruction", "")})
    env.close()
    return history.batch()


def cost_per_call(policy, obs: dict, repeats: int = 30) -> dict:
    """FLOPs, network passes and median latency of one (warm) predict_action at batch 1."""
    passes = {"n": 0}
    hook = policy.dit.register_forward_hook(lambda *a: passes.__setitem__("n", passes["n"] + 1))
    policy.reset()
    policy.predict_action(obs)  # warm: streaming buffers, expert caches
    passes["n"] = 0
    with FlopCounterMode(display=False) as counter:
        policy.predict_action(obs)
    calls = passes["n"]
    hook.remove()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        policy.predict_action(obs)
        sync(str(policy.device))
        times.append(time.perf_counter() - t0)
    return {"gflops": counter.get_total_flops() / 1e9, "passes": calls, "ms": float(np.median(times)) * 1000}


def sweep(checkpoint: str, specs: list[str], episodes: int = 50, n_envs: int = 10, progress: bool = True) -> list[dict]:
    ckpt = resolve(checkpoint)
    cfg = load_config(ckpt)
    tasks, env_options = checkpoint_tasks(cfg)
    task = tasks[0]
    rows = []
    for spec in specs:
        sampler = parse_spec(spec)
        s = evaluate_checkpoint(str(ckpt), n_episodes=episodes, n_envs=n_envs, n_videos=0, sampler=sampler,
                                output_dir=str(ckpt.parent.parent / f"eval_{spec.replace(':', '_')}"), progress=progress)
        policy = load_policy(ckpt)
        policy.set_sampler(**sampler)  # name, steps and any sampler options
        policy.generator = torch.Generator().manual_seed(0)
        cost = cost_per_call(policy, real_obs(policy, task, env_options))
        ta = policy.n_action_steps
        row = {"sampler": spec, "success": s["success_rate"], "wilson_lo": s["wilson95"][0], "wilson_hi": s["wilson95"][1],
               "episodes": s["episodes"], "gflops_per_action": cost["gflops"] / ta, "passes_per_action": cost["passes"] / ta,
               "ms_per_call": cost["ms"], "ms_per_action": cost["ms"] / ta}
        if "fallback_rate" in s:
            row["fallback_rate"] = s["fallback_rate"]
        rows.append(row)
        print(row)
    return add_savings(rows)


def add_savings(rows: list[dict]) -> list[dict]:
    """Each row's FLOPs, passes and latency per action as a saving against the first row's."""
    base = rows[0]
    for r in rows:
        r["flops_saving"] = base["gflops_per_action"] / r["gflops_per_action"]
        r["passes_saving"] = base["passes_per_action"] / r["passes_per_action"]
        r["latency_saving"] = base["ms_per_action"] / r["ms_per_action"]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dp.eval.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("samplers", nargs="+", help="name:steps[:key=value...]; the first is the baseline")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--n-envs", type=int, default=10)
    parser.add_argument("--name", default=None, help="result name (default: sampling_<task>)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    rows = sweep(args.checkpoint, args.samplers, args.episodes, args.n_envs, not args.no_progress)
    cfg = load_config(resolve(args.checkpoint))
    name = args.name or f"sampling_{cfg['task']['name']}"
    write_result(name, rows, ["sampler", "success", "wilson_lo", "wilson_hi", "gflops_per_action", "flops_saving",
                              "passes_per_action", "passes_saving", "ms_per_action", "latency_saving", "fallback_rate"],
                 {"checkpoint": str(Path(args.checkpoint)), "threads": torch.get_num_threads()})


if __name__ == "__main__":
    from dp.cli_errors import user_errors_exit

    with user_errors_exit():
        main()
