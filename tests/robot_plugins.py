"""A robot driver of the kind a user plugs into dp-control with ``robot._target_=...``: not a SimRobot
subclass, only the members of ``dp.control.robot.Robot``. It drives the toy task's gymnasium env, as a
real driver would drive hardware, and keeps what it was sent."""
from __future__ import annotations

import numpy as np

from dp import envs


class ToyDriver:
    sent: list[np.ndarray] = []  # every action received, across instances (the test reads it)

    def __init__(self, gain: float = 1.0):
        self.gain = float(gain)
        self.env = envs.make("toy")
        self.obs, _ = self.env.reset(seed=0)
        self.instruction = ""
        self.episode = 0
        space = self.env.action_space
        self.action_limits = (np.asarray(space.low, np.float32), np.asarray(space.high, np.float32))

    def observe(self) -> dict:
        return {k: np.asarray(v) for k, v in self.obs.items()}

    def act(self, action: np.ndarray) -> None:
        ToyDriver.sent.append(np.array(action))
        self.obs, _, terminated, truncated, _ = self.env.step(self.gain * np.asarray(action, np.float32))
        if terminated or truncated:
            self.obs, _ = self.env.reset(seed=self.episode + 1)
            self.episode += 1

    def close(self) -> None:
        self.env.close()


class NotARobot:
    def __init__(self):
        self.episode = 0

    def close(self) -> None:
        pass
