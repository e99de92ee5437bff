"""What the control loop drives: the ``Robot`` protocol and ``SimRobot``, a simulated task.

    robot = SimRobot("toy")                 # any envs task
    obs = robot.observe()                   # {"state": float32 [S], "agent_pos": [P], ...}
    robot.act(np.zeros(2, np.float32))      # one env.step per control tick
    low, high = robot.action_limits         # float32 [A] each

A robot reports ``episode``, an index that increases when a new episode begins (a real
robot keeps 0); the loop then restarts its observation history and resets the policy.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from dp.constants import EVAL_SEED_BASE


@runtime_checkable
class Robot(Protocol):
    action_limits: tuple[np.ndarray, np.ndarray]  # (low [A], high [A]), env units
    instruction: str  # the language instruction ("" when the task has none)
    episode: int  # index of the current episode; a change means a fresh start

    def observe(self) -> dict[str, np.ndarray]:
        """The latest observation: {key: array}, images uint8 [H, W, 3]."""
        ...

    def act(self, action: np.ndarray) -> None:
        """Send one action [A] (already clipped to ``action_limits``)."""
        ...

    def close(self) -> None: ...


class SimRobot:
    """An ``envs`` task advanced one ``env.step`` per ``act``, i.e. in real time at the loop's rate.

    When an episode ends (terminated, truncated or ``max_steps``) its result is recorded in
    ``results``, ``episode`` goes up, and the next ``observe`` resets the env to the next seed:
    ``seed_base``, ``seed_base + 1``, ... (evaluation seeds, disjoint from collection seeds, as
    dp-eval uses them).
    """

    def __init__(self, task: str, env_options: dict | None = None, seed_base: int = EVAL_SEED_BASE,
                 max_steps: int | None = None):
        from dp import envs

        self.task = task
        self.env = envs.make(task, **(env_options or {}))
        unwrapped = self.env.unwrapped
        self.instruction = str(getattr(unwrapped, "instruction", "") or "")
        self.max_steps = int(max_steps or getattr(unwrapped, "max_episode_steps", 0) or 0) or None
        space = self.env.action_space
        self.action_limits = (np.asarray(space.low, np.float32), np.asarray(space.high, np.float32))
        self.seed_base = int(seed_base)
        self.episode = 0
        self.results: list[dict] = []  # per finished episode: seed, success, length
        self.reports_success = False  # whether the task's info ever carried "is_success"
        self._start()

    def _start(self) -> None:
        self.seed = self.seed_base + self.episode
        self._obs, info = self.env.reset(seed=self.seed)
        self.reports_success = self.reports_success or "is_success" in info
        self.length, self.success, self._reset_due = 0, False, False

    def observe(self) -> dict[str, np.ndarray]:
        if self._reset_due:  # the env resets here, not in the act that ended the episode: that act's
            self._start()    # tick is over when the step is, and the loop starts episodes off the clock
        return self._obs

    def act(self, action: np.ndarray) -> None:
        self._obs, _, terminated, truncated, info = self.env.step(np.asarray(action, np.float32))
        self.length += 1
        if "is_success" in info:
            self.reports_success = True
            self.success = self.success or bool(info["is_success"])
        if terminated or truncated or (self.max_steps is not None and self.length >= self.max_steps):
            self.results.append({"seed": self.seed, "success": self.success, "length": self.length})
            self.episode += 1
            self._reset_due = True

    def close(self) -> None:
        self.env.close()
