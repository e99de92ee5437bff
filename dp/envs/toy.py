"""`toy`: a 2D point reaches a goal past a round obstacle, on either side.

Pure numpy, thousands of steps per second. The scripted expert picks a side at
random each episode, so its demonstrations are **bimodal**: a policy that regresses
the mean action drives into the obstacle, a policy that models the distribution
goes around it. ``info["mode"]`` says which side the agent passed (-1 left, +1 right,
0 not yet), so tests can count modes.

State (float32 [4]): agent x, y, goal x, y. Action (float32 [2]): velocity in
[-1, 1]^2, scaled by ``MAX_SPEED`` per step.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from dp.envs.base import check_expert_options, check_obs_mode

NAMES = ["toy"]
INSTRUCTION = "move the point to the goal without touching the obstacle"

MAX_SPEED = 0.05
OBSTACLE = np.array([0.0, 0.0])
OBSTACLE_RADIUS = 0.3
GOAL = np.array([0.0, 1.0])
GOAL_RADIUS = 0.08
START = np.array([0.0, -1.0])
START_JITTER = 0.1
MAX_STEPS = 120
WORLD = 1.5  # image spans [-WORLD, WORLD]^2


def instruction(name: str) -> str:
    return INSTRUCTION


class ToyEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, obs: str = "state", image_size: int = 64, max_episode_steps: int = MAX_STEPS):
        self.obs_mode = check_obs_mode(obs)
        self.image_size = int(image_size)
        self.max_episode_steps = int(max_episode_steps)
        self.instruction = INSTRUCTION
        self.render_mode = "rgb_array"
        state_space = spaces.Box(-np.inf, np.inf, shape=(4,), dtype=np.float32)
        self.proprio_dims = 2  # the point's own position
        obs_spaces = {"state": state_space}
        obs_spaces["agent_pos"] = spaces.Box(-np.inf, np.inf, shape=(self.proprio_dims,), dtype=np.float32)
        if self.obs_mode == "image":
            obs_spaces["image"] = spaces.Box(0, 255, shape=(self.image_size, self.image_size, 3), dtype=np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.pos = START.copy()
        self.t = 0
        self.mode = 0

    def _obs(self) -> dict[str, np.ndarray]:
        out = {"state": np.concatenate([self.pos, GOAL]).astype(np.float32)}
        out["agent_pos"] = out["state"][: self.proprio_dims].copy()
        if self.obs_mode == "image":
            out["image"] = self.render(self.image_size)
        return out

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.pos = START + self.np_random.uniform(-START_JITTER, START_JITTER, size=2)
        self.t = 0
        self.mode = 0
        return self._obs(), {"is_success": False, "mode": 0, "instruction": self.instruction}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        prev = self.pos.copy()
        self.pos = self.pos + MAX_SPEED * action
        self.t += 1
        if prev[1] < OBSTACLE[1] <= self.pos[1] and self.mode == 0:
            self.mode = -1 if self.pos[0] < OBSTACLE[0] else 1
        collided = np.linalg.norm(self.pos - OBSTACLE) < OBSTACLE_RADIUS
        success = bool(np.linalg.norm(self.pos - GOAL) < GOAL_RADIUS) and not collided
        terminated = success or collided
        truncated = self.t >= self.max_episode_steps and not terminated
        reward = float(success) - 0.01
        info = {"is_success": success, "collided": bool(collided), "mode": self.mode}
        return self._obs(), reward, terminated, truncated, info

    def render(self, size: int | None = None) -> np.ndarray:
        """Top-down RGB frame, uint8 [size, size, 3]: obstacle grey, goal green, agent red."""
        size = size or 96
        c = (np.arange(size) + 0.5) / size * 2 * WORLD - WORLD
        xs, ys = np.meshgrid(c, -c)  # row 0 is the top of the world
        img = np.full((size, size, 3), 255, dtype=np.uint8)
        px = 2 * WORLD / size
        img[(xs - OBSTACLE[0]) ** 2 + (ys - OBSTACLE[1]) ** 2 < OBSTACLE_RADIUS**2] = (120, 120, 120)
        img[(xs - GOAL[0]) ** 2 + (ys - GOAL[1]) ** 2 < max(GOAL_RADIUS, 1.5 * px) ** 2] = (40, 180, 60)
        img[(xs - self.pos[0]) ** 2 + (ys - self.pos[1]) ** 2 < max(0.06, 1.5 * px) ** 2] = (220, 40, 40)
        return img


class ToyExpert:
    """Goes around the obstacle on a side chosen at random per episode, then to the goal."""

    def __init__(self, waypoint_offset: float = 0.5, noise: float = 0.05):
        self.offset = waypoint_offset
        self.noise = noise
        self.rng = np.random.default_rng()
        self.side = 1.0
        self.passed = False

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.side = float(self.rng.choice([-1.0, 1.0]))
        self.passed = False

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        pos, goal = obs["state"][:2].astype(np.float64), obs["state"][2:4].astype(np.float64)
        waypoint = OBSTACLE + np.array([self.side * self.offset, 0.0])
        if np.linalg.norm(pos - waypoint) < 0.1 or pos[1] > waypoint[1]:
            self.passed = True
        target = goal if self.passed else waypoint
        delta = (target - pos) / MAX_SPEED
        speed = np.linalg.norm(delta)
        if speed > 1.0:
            delta = delta / speed
        delta = delta + self.noise * self.rng.standard_normal(2)
        return np.clip(delta, -1.0, 1.0).astype(np.float32)


def make(name: str = "toy", **options) -> ToyEnv:
    return ToyEnv(**options)


def expert(name: str = "toy", **options) -> ToyExpert:
    check_expert_options(name, options)
    return ToyExpert()
