"""`pusht`: gym_pusht's Push-T (diffusion policy's planar pushing task), with dict obs.

    env = envs.make("pusht", obs="image")      # state [5] f32, keypoint [16] f32, image [96,96,3] u8
    expert = envs.expert("pusht")               # scripted pusher (see PushTExpert)

A blue disc (the agent, radius 15) pushes a grey T-shaped block on a 512 x 512 table
(frictionless, heavily damped: the block stops as soon as it is not pushed) onto a fixed
green T-shaped target at (256, 256) turned by pi/4.

State (float32 [5]): agent x, y, block x, y, block angle (rad, in [0, 2 pi)); the
block's position is its body origin, the middle of the top edge of the T's bar, in
gym_pusht's coordinates (pixels; same as its ``obs_type="state"``).
Action (float32 [2]): the agent's target position in [0, 512]^2 (a PD controller
drives the disc toward it during the 0.1 s step).

Keypoint (float32 [16], in every obs mode): the T's eight corners (x0, y0, x1, y1, ...; gym_pusht's
``get_keypoints``, the same as its ``environment_state``), in pixels. Diffusion Policy's low-dim PushT
policy reads keypoints rather than the pose: they carry the angle without its wrap at 2 pi (PushT's task config
selects them: ``task.state_keys=[agent_pos, keypoint]``; the store keeps them as ``data/keypoint``).

``image`` (with ``obs="image"``): gym_pusht's own top-down rendering at
``image_size`` (default 96, as in diffusion policy), upright as drawn;
``render()`` returns a ``render_size`` frame (default 384) with the last action
marked by a red cross.

``info["is_success"]``: gym_pusht's criterion, more than 95% of the target covered
by the block (``info["coverage"]`` has the fraction). ``info["score"]`` is Diffusion Policy's
PushT figure for the episode so far: the highest reward reached, reward being gym_pusht's
clip(coverage / 0.95, 0, 1) (DP's "coverage" is the mean of this over episodes). The episode terminates on
success and truncates after ``max_episode_steps`` (default 300, gym_pusht's limit).
``reset(seed=s)`` seeds gym_pusht's generator: the same seed, the same start (agent
and block positions uniform, block angle uniform in [-pi, pi)); unseeded resets
continue its stream.

Options: obs, image_size, max_episode_steps, render_size.
"""
from __future__ import annotations

import os
import warnings

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from dp.envs.base import check_expert_options, check_obs_mode
from dp.envs.errors import EnvOptionError, EnvValueError

NAMES = ["pusht"]
INSTRUCTION = "push the T-shaped block onto the T-shaped target"
MAX_STEPS = 300
OPTIONS = ("obs", "image_size", "max_episode_steps", "render_size")
GOAL = np.array([256.0, 256.0, np.pi / 4])  # gym_pusht's fixed goal pose (x, y, angle)


def instruction(name: str = "pusht") -> str:
    return INSTRUCTION


def _pusht_env_class():
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # pygame's hello banner
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from gym_pusht.envs.pusht import PushTEnv
    return PushTEnv


class PushTDictEnv(gym.Env):
    """gym_pusht's PushTEnv with dict observations and the shared conventions."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        obs: str = "state",
        image_size: int = 96,
        max_episode_steps: int = MAX_STEPS,
        render_size: int = 384,
    ):
        self.obs_mode = check_obs_mode(obs)
        self.image_size = int(image_size)
        self.render_size = int(render_size)
        self.max_episode_steps = int(max_episode_steps)
        if self.max_episode_steps < 1 or self.image_size < 1 or self.render_size < 1:
            raise EnvValueError("max_episode_steps, image_size and render_size must be positive.")
        self.instruction = INSTRUCTION
        self.render_mode = "rgb_array"
        self._env = _pusht_env_class()(
            obs_type="state",
            render_mode="rgb_array",
            observation_width=self.image_size,
            observation_height=self.image_size,
            visualization_width=self.render_size,
            visualization_height=self.render_size,
        )
        self.proprio_dims = 2  # the agent disc x, y (diffusion_policy's agent_pos)
        obs_spaces = {"state": spaces.Box(-np.inf, np.inf, shape=(5,), dtype=np.float32)}
        obs_spaces["agent_pos"] = spaces.Box(-np.inf, np.inf, shape=(self.proprio_dims,), dtype=np.float32)
        obs_spaces["keypoint"] = spaces.Box(-np.inf, np.inf, shape=(16,), dtype=np.float32)
        if self.obs_mode == "image":
            obs_spaces["image"] = spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Box(0.0, 512.0, shape=(2,), dtype=np.float32)
        self._t = 0

    def _obs(self, state: np.ndarray) -> dict[str, np.ndarray]:
        out = {"state": np.asarray(state, dtype=np.float32)}
        out["agent_pos"] = out["state"][: self.proprio_dims].copy()
        out["keypoint"] = self._env.get_keypoints(self._env._block_shapes).reshape(16).astype(np.float32)
        if self.obs_mode == "image":
            out["image"] = np.ascontiguousarray(self._env._render(visualize=False), dtype=np.uint8)
        return out

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        state, _ = self._env.reset(seed=seed, options=options)
        self._t, self._score = 0, 0.0
        return self._obs(state), {"is_success": False, "instruction": self.instruction}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(2), 0.0, 512.0)
        state, reward, _, _, pinfo = self._env.step(action)
        self._t += 1
        success = bool(pinfo["is_success"])
        truncated = self._t >= self.max_episode_steps and not success
        self._score = max(self._score, float(reward))
        info = {"is_success": success, "coverage": float(pinfo["coverage"]), "score": self._score}
        return self._obs(state), float(reward), success, truncated, info

    def render(self) -> np.ndarray:
        """RGB frame, uint8 [render_size, render_size, 3], the last action marked."""
        return np.ascontiguousarray(self._env._render(visualize=True), dtype=np.uint8)

    def close(self):
        self._env.close()


# -- scripted expert -------------------------------------------------------------------
# The T in its body frame (gym_pusht's add_tee, scale 30): bar x in [-60, 60], y in
# [0, 30]; stem x in [-15, 15], y in [30, 120]. Mass 1; gym_pusht computes the moment of
# inertia from the bar twice (3000); the centre of gravity is at (0, 45).
COG = np.array([0.0, 45.0])
INERTIA = 3000.0
AGENT_R = 15.0
LO, HI = 5.0 + AGENT_R, 506.0 - AGENT_R  # where the disc fits between the walls
RECTS = ((np.array([-60.0, 0.0]), np.array([60.0, 30.0])), (np.array([-15.0, 30.0]), np.array([15.0, 120.0])))
# Pushable edge segments: (start, end, outward normal), local frame. Where an edge meets
# the other rectangle at a concave corner, the disc (radius 15) cannot reach the last
# 15 px, so those parts are left out.
EDGES = (
    ((-60.0, 0.0), (60.0, 0.0), (0.0, -1.0)),  # top of the bar
    ((-60.0, 0.0), (-60.0, 30.0), (-1.0, 0.0)),  # left end of the bar
    ((60.0, 0.0), (60.0, 30.0), (1.0, 0.0)),  # right end of the bar
    ((-60.0, 30.0), (-30.0, 30.0), (0.0, 1.0)),  # under the bar, left
    ((30.0, 30.0), (60.0, 30.0), (0.0, 1.0)),  # under the bar, right
    ((-15.0, 45.0), (-15.0, 120.0), (-1.0, 0.0)),  # left of the stem
    ((15.0, 45.0), (15.0, 120.0), (1.0, 0.0)),  # right of the stem
    ((-15.0, 120.0), (15.0, 120.0), (0.0, 1.0)),  # foot of the stem
)


def _rot(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]])


def _cross(a, b) -> float:
    return float(a[0] * b[1] - a[1] * b[0])


def _wrap(a: float) -> float:
    return float((a + np.pi) % (2 * np.pi) - np.pi)


class PushTExpert:
    """Scripted pusher: quasi-static, point contact, re-planned every step.

    Contacts are frictionless in gym_pusht (shape friction 0), so a push at boundary point
    p moves the block along the inward normal n and turns it by the torque (p - cog) x n:
    per unit of push, the centre of gravity moves by J n and the angle by J (r x n) / I,
    with J = 1 / (1 + (r x n)^2 / I). Each step the expert scores candidate contacts
    (points along the T's reachable edges) by how fast a push there shrinks the pose
    error (centre of gravity and angle, the angle weighted by ``L`` px per rad), keeps
    pushing at the current contact while it stays nearly as good as the best, and
    otherwise walks the disc to the approach point of the best contact it can reach
    (approach inside the walls; a collision-free path, around the block by a ring of
    waypoints, Dijkstra) and pushes from there, as deep as the (weighted) error calls
    for, at most ``STEP`` px a step. Deterministic.
    """

    L = 60.0  # px per rad in the pose error
    STEP = 30.0  # largest push per step (px)
    SAMPLES = 7  # candidate points per edge
    KEEP = 0.6  # keep the current contact while its rate >= KEEP * best rate
    GAP = 6.0  # approach point: this far off the edge (beyond the disc's radius)
    RING = 75.0 + AGENT_R + 12.0  # detour ring radius around the cog (T reaches 75 px)

    def __init__(self):
        self.rng = np.random.default_rng()
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.contact = None  # (edge index, fraction along it) being pushed at
        self.pushing = False

    # geometry ----------------------------------------------------------------------
    @staticmethod
    def _cog(pose):
        return pose[:2] + _rot(pose[2]) @ COG

    @staticmethod
    def _dist(points, pose) -> np.ndarray:
        """Distance from world points [N, 2] to the T (0 inside)."""
        local = (np.atleast_2d(points) - pose[:2]) @ _rot(pose[2])  # rows: R^T (p - x)
        d = np.full(len(local), np.inf)
        for lo, hi in RECTS:
            d = np.minimum(d, np.linalg.norm(local - np.clip(local, lo, hi), axis=1))
        return d

    def _clear(self, a, b, pose, margin=AGENT_R + 2.0) -> bool:
        n = max(2, int(np.linalg.norm(b - a) / 4.0))
        t = np.linspace(0.0, 1.0, n)[1:, None]
        return bool(np.all(self._dist(a + (b - a) * t, pose) > margin))

    def _candidates(self, pose):
        """(edge, frac, contact point p, inward normal n) in the world frame."""
        R = _rot(pose[2])
        out = []
        for k, (a, b, nrm) in enumerate(EDGES):
            a, b, nrm = np.array(a), np.array(b), np.array(nrm)
            for f in np.linspace(0.05, 0.95, self.SAMPLES):
                out.append((k, f, pose[:2] + R @ (a + f * (b - a)), -(R @ nrm)))
        return out

    def _rate(self, p, n, cog, err):
        """Weighted pose-error gradient per unit push and the error's decrease rate."""
        r = p - cog
        rxn = _cross(r, n)
        J = 1.0 / (1.0 + rxn * rxn / INERTIA)
        g = np.array([J * n[0], J * n[1], self.L * J * rxn / INERTIA])
        return g, float(g @ err) / max(np.linalg.norm(err), 1e-9)

    def _contact_point(self, k, f, pose):
        a, b, nrm = (np.array(v) for v in EDGES[k])
        R = _rot(pose[2])
        return pose[:2] + R @ (a + f * (b - a)), -(R @ nrm)

    # policy ------------------------------------------------------------------------
    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        s = np.asarray(obs["state"], dtype=np.float64)
        agent, pose = s[:2], s[2:5]
        cog = self._cog(pose)
        goal_cog = self._cog(GOAL)
        err = np.array([*(goal_cog - cog), self.L * _wrap(GOAL[2] - pose[2])])

        cands = self._candidates(pose)
        rates = [self._rate(p, n, cog, err)[1] for _, _, p, n in cands]
        if self.contact is not None:
            p, n = self._contact_point(*self.contact, pose)
            cur = self._rate(p, n, cog, err)[1]
            if cur < self.KEEP * max(rates) or cur <= 0:
                self.contact, self.pushing = None, False
        if self.contact is None:
            self.pushing = False
            for i in np.argsort(rates)[::-1]:  # the best contact with a way to it
                k, f, p, n = cands[i]
                approach = p - n * (AGENT_R + self.GAP)
                if np.all((approach > LO) & (approach < HI)):
                    waypoint = self._path(agent, approach, pose, cog)
                    if waypoint is not None:
                        self.contact = (k, f)
                        break
            if self.contact is None:  # boxed in: back off from the block
                away = (agent - cog) / max(np.linalg.norm(agent - cog), 1e-9)
                return np.clip(agent + 30.0 * away, LO, HI).astype(np.float32)
        p, n = self._contact_point(*self.contact, pose)
        g, _ = self._rate(p, n, cog, err)
        touch = p - n * AGENT_R  # disc centre when touching p
        approach = p - n * (AGENT_R + self.GAP)
        if not self.pushing:
            if np.linalg.norm(agent - approach) < 4.0:
                self.pushing = True
            else:
                waypoint = self._path(agent, approach, pose, cog)
                if waypoint is None:
                    self.contact = None
                    waypoint = agent
                return np.clip(waypoint, LO, HI).astype(np.float32)
        # push: how far along n would bring the error to its least (weighted)
        depth = float(np.clip(g @ err / max(g @ g, 1e-9), 2.0, self.STEP))
        target = touch + n * depth
        return np.clip(target, 0.0, 512.0).astype(np.float32)

    def _path(self, agent, goal, pose, cog):
        """First waypoint of a short collision-free path from the disc to ``goal``, going
        around the block by a ring of points outside it (those inside the table), or
        None when there is none."""
        if self._clear(agent, goal, pose):
            return goal
        nodes = [agent, goal]
        for radius in (self.RING, self.RING + 25.0):
            for a in np.linspace(0.0, 2 * np.pi, 16, endpoint=False):
                q = cog + radius * np.array([np.cos(a), np.sin(a)])
                if np.all((q > LO) & (q < HI)):
                    nodes.append(q)
        nodes = np.array(nodes)
        n = len(nodes)
        dist = np.full(n, np.inf)
        prev = np.full(n, -1)
        dist[0] = 0.0
        done = np.zeros(n, bool)
        for _ in range(n):  # Dijkstra; edges checked lazily
            i = int(np.argmin(np.where(done, np.inf, dist)))
            if not np.isfinite(dist[i]) or i == 1:
                break
            done[i] = True
            for j in range(n):
                if done[j] or j == i:
                    continue
                w = float(np.linalg.norm(nodes[j] - nodes[i]))
                if dist[i] + w < dist[j] and (w < 80.0 or j == 1 or i == 0) and self._clear(nodes[i], nodes[j], pose):
                    dist[j], prev[j] = dist[i] + w, i
        if not np.isfinite(dist[1]):
            return None
        j = 1
        while prev[j] != 0:
            j = prev[j]
        return nodes[j]


def make(name: str = "pusht", **options) -> PushTDictEnv:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise EnvOptionError(f"unknown option(s) {unknown} for {name}; options are {list(OPTIONS)}.")
    return PushTDictEnv(**options)


def expert(name: str = "pusht", **options):
    check_expert_options(name, options)
    return PushTExpert()
