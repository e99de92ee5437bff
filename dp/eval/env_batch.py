"""``n`` environments of one task, stepped together for a batched policy.

    envs = EnvBatch("mw_push", {}, n=4, vector="async")   # or "sync": all in this process
    obs = envs.reset(seeds)                   # [{key: array}] one per env
    results = envs.step(actions, active)      # per env: env.step's 5-tuple, None if inactive
    frames = envs.render([True, False, ...])  # RGB frames of the envs asked for (None for the others)

``sync`` steps the envs one after another in this process. ``async`` gives each env its own
subprocess (gymnasium's ``AsyncVectorEnv``), so their simulation steps run in parallel with one
another and with nothing else: on a 2-core machine, two envs step at the cost of one. A finished env
is stepped on with the others (its actions and results are ignored); it resets itself the step it
ends (``SAME_STEP``), so no env is stepped past its episode's end.
"""
from __future__ import annotations

import numpy as np

VECTOR_MODES = ("sync", "async")


def _row(tree, i: int):
    """Entry ``i`` of a vectorized info dict (gymnasium's ``_key`` masks say which envs have a key)."""
    out = {}
    for k, v in tree.items():
        if k.startswith("_") or not tree.get(f"_{k}", np.ones(i + 1, bool))[i]:
            continue
        out[k] = _row(v, i) if isinstance(v, dict) else v[i]
    return out


class EnvBatch:
    def __init__(self, task: str, env_options: dict, n: int, vector: str = "sync"):
        from dp import envs

        if vector not in VECTOR_MODES:
            raise ValueError(f"vector must be one of {list(VECTOR_MODES)}, got {vector!r}.")
        self.n, self.vector = n, vector
        if vector == "sync":
            self.envs = [envs.make(task, **env_options) for _ in range(n)]
            self.probe = self.envs[0]
        else:
            from gymnasium.vector import AsyncVectorEnv, AutoresetMode

            self.vec = AsyncVectorEnv([lambda: envs.make(task, **env_options)] * n,
                                      autoreset_mode=AutoresetMode.SAME_STEP)
            self.probe = envs.make(task, **env_options)  # this process's copy: instruction, rates, limits

    @property
    def instruction(self) -> str:
        return getattr(self.probe.unwrapped, "instruction", "")

    @property
    def max_episode_steps(self) -> int:
        return getattr(self.probe.unwrapped, "max_episode_steps", 10_000) or 10_000

    def reset(self, seeds: list[int]) -> list[dict]:
        if self.vector == "sync":
            return [env.reset(seed=s)[0] for env, s in zip(self.envs, seeds)]
        obs, _ = self.vec.reset(seed=list(seeds))
        return [{k: v[i] for k, v in obs.items()} for i in range(self.n)]

    def step(self, actions: np.ndarray, active: list[bool]) -> list[tuple | None]:
        if self.vector == "sync":
            return [env.step(a) if on else None for env, a, on in zip(self.envs, actions, active)]
        actions = np.where(np.asarray(active)[:, None], actions, 0).astype(np.float32)
        obs, reward, terminated, truncated, info = self.vec.step(actions)
        out = []
        for i, on in enumerate(active):
            if not on:
                out.append(None)
                continue
            row = _row(info, i)
            ended = bool(terminated[i] or truncated[i])
            # the env reset itself in this step: its episode's last observation and info are the final ones
            o = row["final_obs"] if ended else {k: v[i] for k, v in obs.items()}
            out.append((o, float(reward[i]), bool(terminated[i]), bool(truncated[i]), row["final_info"] if ended else row))
        return out

    def render(self, which: list[bool]) -> list:
        if not any(which):
            return [None] * self.n
        if self.vector == "sync":
            return [env.render() if w else None for env, w in zip(self.envs, which)]
        frames = self.vec.call("render")
        return [f if w else None for f, w in zip(frames, which)]

    def close(self) -> None:
        if self.vector == "sync":
            for env in self.envs:
                env.close()
        else:
            self.vec.close()
            self.probe.close()
