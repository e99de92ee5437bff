"""Run a scripted expert in its env: the one loop dp-collect and the success table share."""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Episode:
    """One expert episode. ``obs[k]`` is [T, ...] (the observation each action answered)."""

    obs: dict[str, np.ndarray]
    action: np.ndarray  # [T, A] float32
    success: bool
    seed: int
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.action)


def run_expert_episode(env, expert, seed: int, max_steps: int | None = None) -> Episode:
    """Reset env and expert with ``seed`` and step until terminated/truncated (or ``max_steps``). An expert
    with ``perturb`` (a DART demonstrator) has its actions executed with noise; ``action`` keeps its labels."""
    obs, info = env.reset(seed=seed)
    expert.reset(seed=seed)
    perturb = getattr(expert, "perturb", None)
    frames: dict[str, list[np.ndarray]] = {k: [] for k in obs}
    actions: list[np.ndarray] = []
    success = False
    t = 0
    while True:
        action = np.asarray(expert.act(obs), dtype=np.float32)
        for k, v in obs.items():
            frames[k].append(np.asarray(v))
        actions.append(action)
        if perturb is not None:
            action = perturb(action, env.action_space.low, env.action_space.high)
        obs, _, terminated, truncated, info = env.step(action)
        success = success or bool(info.get("is_success", False))
        t += 1
        if terminated or truncated or (max_steps is not None and t >= max_steps):
            break
    return Episode(
        obs={k: np.stack(v) for k, v in frames.items()},
        action=np.stack(actions).astype(np.float32),
        success=success,
        seed=seed,
        info={k: v for k, v in info.items() if isinstance(v, (bool, int, float, str))},
    )


def expert_success_rate(name: str, n_episodes: int = 50, first_seed: int = 0, expert_options: dict | None = None,
                        **env_options) -> dict:
    """Success rate of a task's scripted expert (built with ``expert_options``) over seeds
    first_seed..first_seed+n-1."""
    from dp import envs

    env = envs.make(name, **env_options)
    expert = envs.expert(name, **(expert_options or {}))
    t0 = time.perf_counter()
    results = [run_expert_episode(env, expert, seed) for seed in range(first_seed, first_seed + n_episodes)]
    env.close()
    lengths = [len(e) for e in results]
    return {
        "task": name,
        "episodes": n_episodes,
        "success_rate": float(np.mean([e.success for e in results])),
        "mean_length": float(np.mean(lengths)),
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> None:
    """`python -m dp.envs.rollout TASK [TASK ...] --episodes 50 [--option robot=Sawyer] [--expert-option
    plan=two_switches]`: expert success as JSON lines."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("tasks", nargs="+", help="task names or sets (mt10, mt50)")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="env option passed to envs.make (repeatable), e.g. robot=Sawyer")
    parser.add_argument("--expert-option", action="append", default=[], metavar="KEY=VALUE",
                        help="expert option passed to envs.expert (repeatable), e.g. plan=two_switches, action_noise=0.2")
    args = parser.parse_args(argv)
    from dp import envs

    def pairs(items: list[str], flag: str) -> dict:
        out = {}
        for item in items:
            key, sep, value = item.partition("=")
            if not sep:
                parser.error(f"{flag} expects KEY=VALUE, got {item!r}")
            out[key] = value
        return out

    options, expert_options = pairs(args.option, "--option"), pairs(args.expert_option, "--expert-option")
    for name in args.tasks:
        for task in envs.task_set(name):
            row = expert_success_rate(task, args.episodes, args.first_seed, expert_options, **options)
            print(json.dumps({**row, **options, **({"expert_options": expert_options} if expert_options else {})}),
                  flush=True)


if __name__ == "__main__":
    main()
