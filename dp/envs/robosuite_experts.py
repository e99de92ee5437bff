"""Scripted experts for the `rs` family: waypoint state machines over OSC_POSE.

Each expert reads positions from the ``state`` vector (layout in ``envs.robosuite_tasks``:
per arm eef pos [3], eef quat [4], gripper qpos [g], then the task's object-state, read
from the end) and drives the arm with proportional control, clipped to [-1, 1]:

- position: action = (target - eef) / 5 cm * ``POS_GAIN``, norm-limited to the phase's
  speed (1 = 5 cm of goal change per step);
- orientation: the gripper points down, R = Rz(yaw) @ diag(1, -1, -1), so its fingers
  close along Rz(yaw) @ y; the axis-angle error to that target / 0.5 rad * ``ROT_GAIN``.
  All four supported robots start in that frame (at yaw 0), so the experts know no robot.

Phases advance on position and orientation tolerances or on step counts (closing the
gripper takes a fixed number of steps; no expert reads the gripper's joints, whose
meaning differs between grippers). A grasp that slips (the object stops following the
hand) sends the machine back to the approach phase.
"""
from __future__ import annotations

import numpy as np

from dp.envs.base import check_expert_options
from dp.envs.errors import EnvValueError
from dp.envs.robosuite_tasks import OBJECT_DIMS

POS_SCALE = 0.05  # m of goal change per unit action (OSC_POSE output_max)
ROT_SCALE = 0.5  # rad of goal change per unit action
POS_GAIN = 2.0
ROT_GAIN = 1.0
OPEN, CLOSE = -1.0, 1.0
R_DOWN = np.diag([1.0, -1.0, -1.0])


# -- small rotation helpers (quaternions are x, y, z, w as robosuite gives them) ------------
def quat2mat(q: np.ndarray) -> np.ndarray:
    x, y, z, w = np.asarray(q, dtype=np.float64) / max(np.linalg.norm(q), 1e-12)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def rotvec(R: np.ndarray) -> np.ndarray:
    """Axis-angle vector of a rotation matrix."""
    cos = np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    v = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    if angle < 1e-6:
        return 0.5 * v
    if np.pi - angle < 1e-3:  # near pi: axis from the diagonal
        axis = np.sqrt(np.clip((np.diag(R) + 1.0) / 2.0, 0.0, None))
        k = int(np.argmax(axis))
        axis = axis * np.sign(np.r_[R[k, 0] + R[0, k], R[k, 1] + R[1, k], R[k, 2] + R[2, k]])
        axis[k] = abs(axis[k])
        return angle * axis / np.linalg.norm(axis)
    return angle * v / (2.0 * np.sin(angle))


def rot_z(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def yaw_of(q: np.ndarray) -> float:
    """Heading of a body's x axis in the xy plane."""
    R = quat2mat(q)
    return float(np.arctan2(R[1, 0], R[0, 0]))


def wrap(angle: float, period: float) -> float:
    """Angle modulo ``period``, in [-period/2, period/2)."""
    return float((angle + period / 2) % period - period / 2)


def hand_yaw(q: np.ndarray) -> float:
    """Yaw of a downward-pointing hand (the heading of its x axis)."""
    return yaw_of(q)


def arm_action(pos, quat, target, yaw, grip, speed=1.0) -> np.ndarray:
    """OSC_POSE action [7] driving one arm toward ``target`` with the hand down at ``yaw``."""
    dp = (np.asarray(target, dtype=np.float64) - pos) / POS_SCALE * POS_GAIN
    n = np.linalg.norm(dp)
    if n > speed:
        dp *= speed / n
    err = rotvec(rot_z(yaw) @ R_DOWN @ quat2mat(quat).T)
    dr = np.clip(err / ROT_SCALE * ROT_GAIN, -1.0, 1.0)
    return np.concatenate([np.clip(dp, -1, 1), dr, [grip]])


def yaw_error(quat, yaw) -> float:
    return float(np.linalg.norm(rotvec(rot_z(yaw) @ R_DOWN @ quat2mat(quat).T)))


class _Arms:
    """Splits ``state`` into per-arm eef pose and the object-state tail."""

    def __init__(self, name: str, n_arms: int = 1):
        self.obj_dim = OBJECT_DIMS[name]
        self.n_arms = n_arms

    def parse(self, state: np.ndarray):
        state = np.asarray(state, dtype=np.float64)
        proprio, obj = state[: -self.obj_dim], state[-self.obj_dim :]
        per = len(proprio) // self.n_arms
        arms = [(proprio[i * per : i * per + 3], proprio[i * per + 3 : i * per + 7]) for i in range(self.n_arms)]
        return arms, obj


class _PickExpert:
    """Shared pick-and-place state machine for one arm.

    Subclasses say how to grasp (``grasp``: grasp point and hand yaw), which point of the
    object to steer while carrying it (``held_point``), the hand yaw while carrying
    (``carry_yaw``) and where to put it (``place``; None = just lift it and hold).
    Yaws are unwrapped angles (the hand starts near 0): the commanded yaw moves toward
    the target by at most ``YAW_STEP`` at a time, so long turns go the planned way round.
    """

    name = ""
    hover = 0.10  # approach height above the grasp point
    lift_height = 0.15  # carry height of the hand above its grasp height
    close_steps = 12
    release_steps = 10
    tol = 0.008
    yaw_tol = 0.08
    place_tol = 0.01
    carry_speed = 1.0
    settle_speed = 0.01  # hand motion per step (m) below which a carry counts as settled
    lower_step = 0.02  # m of descent per step target while lowering
    lower_steps = 60  # let go after this many steps of lowering in any case
    YAW_STEP = 0.8
    OPTIONS: tuple[str, ...] = ()  # constructor options expert() accepts (task.expert_options)

    def __init__(self):
        self.arms = _Arms(self.name)
        self.rng = np.random.default_rng()
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.phase = "above"
        self.t = 0
        self.hyaw = None  # unwrapped hand yaw
        self.grasp_yaw = 0.0
        self.start_z = None
        self.offset = None  # held point minus hand position, at grasp
        self.prev_pos = None

    # to override --------------------------------------------------------------------
    def grasp(self, obj) -> tuple[np.ndarray, float]:
        """Grasp point (world) and hand yaw."""
        raise NotImplementedError

    def held_point(self, obj) -> np.ndarray:
        """The point of the object that is steered to the place target while carried."""
        return self.grasp(obj)[0]

    def carry_yaw(self, obj) -> float:
        return self.grasp_yaw

    def place(self, obj):
        """(goal point for ``held_point``, its height at release), or None to just lift."""
        return None

    # ------------------------------------------------------------------------------
    def _go(self, phase):
        self.phase, self.t = phase, 0

    def _dropped(self, pos, obj) -> bool:
        """The held point no longer keeps its distance (or height) to the hand (the hand
        may turn while carrying, which swings an off-centre held point around it)."""
        rel = self.held_point(obj) - pos
        return abs(np.linalg.norm(rel) - np.linalg.norm(self.offset)) > 0.02 or abs(rel[2] - self.offset[2]) > 0.03

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        [(pos, quat)], obj = self.arms.parse(obs["state"])
        y = hand_yaw(quat)
        self.hyaw = y if self.hyaw is None else self.hyaw + wrap(y - self.hyaw, 2 * np.pi)
        self.t += 1
        if self.prev_pos is None:
            self.prev_pos = pos
        grip, target, speed = OPEN, pos, 1.0
        if self.phase in ("above", "descend", "close"):
            gpos, gyaw = self.grasp(obj)
            if self.phase != "close":
                self.grasp_yaw = gyaw
            yaw = self.grasp_yaw
        else:
            yaw = self.carry_yaw(obj)
        if self.phase == "above":
            target = gpos + [0, 0, self.hover]
            if (
                np.linalg.norm((target - pos)[:2]) < self.tol
                and abs(target[2] - pos[2]) < 0.02
                and abs(yaw - self.hyaw) < self.yaw_tol
            ):
                self._go("descend")
        if self.phase == "descend":
            target = gpos.copy()
            if np.linalg.norm((gpos - pos)[:2]) > 2 * self.tol:  # drifted: re-centre first
                target[2] = max(pos[2], gpos[2])
            err = np.linalg.norm(target - pos)
            if err < self.tol or (self.t > 30 and err < 2 * self.tol):  # or stalled close by
                self._go("close")
        if self.phase == "close":
            target, grip = gpos, CLOSE
            if self.t >= self.close_steps:
                self.start_z = gpos[2]
                self.offset = self.held_point(obj) - pos
                self._go("lift")
                yaw = self.carry_yaw(obj)
        if self.phase == "lift":
            grip = CLOSE
            target = np.array([pos[0], pos[1], self.start_z + self.lift_height])
            if self._dropped(pos, obj):
                self._go("above")
            elif abs(target[2] - pos[2]) < 0.02:
                self._go("carry" if self.place(obj) is not None else "hold")
        if self.phase == "hold":
            grip = CLOSE
            target = np.array([pos[0], pos[1], self.start_z + self.lift_height])
        if self.phase == "carry":  # at lift height, steer the held point over the goal
            grip, speed = CLOSE, self.carry_speed
            goal, _ = self.place(obj)
            err = goal[:2] - self.held_point(obj)[:2]
            target = np.array([pos[0] + err[0], pos[1] + err[1], self.start_z + self.lift_height])
            if self._dropped(pos, obj):
                self._go("above")
            elif (
                np.linalg.norm(err) < self.place_tol
                and abs(yaw - self.hyaw) < self.yaw_tol
                and np.linalg.norm(pos - self.prev_pos) < self.settle_speed  # settled: no overshoot
            ):
                self._go("lower")
        if self.phase == "lower":
            grip = CLOSE
            goal, release_z = self.place(obj)
            held = self.held_point(obj)
            err = goal[:2] - held[:2]
            # go down only while the held point is over the goal, by at most lower_step a step
            dz = max(release_z - held[2], -self.lower_step) if np.linalg.norm(err) < 2 * self.place_tol else 0.0
            target = np.array([pos[0] + err[0], pos[1] + err[1], pos[2] + dz])
            if held[2] - release_z < 0.005 or self.t > self.lower_steps:
                self._go("release")
        if self.phase == "release":
            grip, target = OPEN, pos
            if self.t >= self.release_steps:
                self._go("retreat")
        if self.phase == "retreat":
            grip = OPEN
            target = np.array([pos[0], pos[1], pos[2] + 0.1])
        yaw_cmd = self.hyaw + np.clip(yaw - self.hyaw, -self.YAW_STEP, self.YAW_STEP)
        self.prev_pos = pos
        return arm_action(pos, quat, target, yaw_cmd, grip, speed).astype(np.float32)


class LiftExpert(_PickExpert):
    """Lift: grasp the cube (fingers across two faces) and raise it 15 cm."""

    name = "rs_lift"

    def grasp(self, obj):
        cube, q = obj[0:3], obj[3:7]
        return cube + [0, 0, -0.005], wrap(yaw_of(q), np.pi / 2)


class CanExpert(_PickExpert):
    """PickPlaceCan: grasp the can from above, carry it over the can's bin compartment
    (robosuite's target_bin_placements[3]; constant), lower it in and let go."""

    name = "rs_can"
    lift_height = 0.15
    GOAL = np.array([0.16, 0.35, 0.0])
    RELEASE_Z = 0.90  # can centre height to let go at (bin floor 0.82; walls reach 0.90)

    def grasp(self, obj):
        can = obj[7:10]
        return can + [0, 0, 0.015], 0.0  # the palm stops on the can top lower down

    def held_point(self, obj):
        return obj[7:10]

    def place(self, obj):
        return self.GOAL, self.RELEASE_Z


class StackExpert(_PickExpert):
    """Stack: grasp cube A (red), carry it over cube B (green), set it down on B, let go."""

    name = "rs_stack"
    lift_height = 0.12

    def grasp(self, obj):
        return obj[0:3] + [0, 0, -0.005], wrap(yaw_of(obj[3:7]), np.pi / 2)

    def held_point(self, obj):
        return obj[0:3]

    def place(self, obj):
        b = obj[7:10]
        return b, b[2] + 0.025 + 0.02 + 0.005  # A's centre when resting on B, plus 5 mm


class TwoArmLiftExpert:
    """TwoArmLift ("parallel" robots): robot0 takes handle0, robot1 handle1, each hand's
    fingers closing along the pot's radius (across the handle bar); the phases advance
    for both arms together, and both lift at the same speed so the pot stays level."""

    name = "rs_two_arm_lift"
    hover = 0.08
    tol = 0.008
    yaw_tol = 0.08
    close_steps = 15
    lift_height = 0.25
    lift_speed = 0.5

    def __init__(self):
        self.arms = _Arms(self.name, n_arms=2)
        self.rng = np.random.default_rng()
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.phase, self.t = "above", 0
        self.yaws = None
        self.start = None

    def _go(self, phase):
        self.phase, self.t = phase, 0

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        arms, obj = self.arms.parse(obs["state"])
        pot, handles = obj[0:3], (obj[7:10], obj[10:13])
        self.t += 1
        if self.phase in ("above", "descend"):
            yaws = []
            for h in handles:
                r = h[:2] - pot[:2]
                yaws.append(wrap(np.arctan2(r[1], r[0]) - np.pi / 2, np.pi))
            self.yaws = yaws
        targets, grip, speed = [None, None], OPEN, 1.0
        if self.phase == "above":
            targets = [h + [0, 0, self.hover] for h in handles]
            if all(
                np.linalg.norm((tg - p)[:2]) < self.tol and abs(tg[2] - p[2]) < 0.02 and yaw_error(q, y) < self.yaw_tol
                for tg, (p, q), y in zip(targets, arms, self.yaws)
            ):
                self._go("descend")
        if self.phase == "descend":
            targets = [np.array(h) for h in handles]
            errs = [np.linalg.norm(tg - p) for tg, (p, _) in zip(targets, arms)]
            if max(errs) < self.tol or (self.t > 30 and max(errs) < 2 * self.tol):
                self._go("close")
        if self.phase == "close":
            targets, grip = [np.array(h) for h in handles], CLOSE
            if self.t >= self.close_steps:
                self.start = [p.copy() for p, _ in arms]
                self._go("lift")
        if self.phase == "lift":
            grip, speed = CLOSE, self.lift_speed
            z = min(p[2] for p, _ in arms) + 0.03  # the lower hand leads no further than 3 cm
            top = max(s[2] for s in self.start) + self.lift_height
            targets = [np.array([s[0], s[1], min(z, top)]) for s in self.start]
        return np.concatenate(
            [arm_action(p, q, tg, y, grip, speed) for (p, q), tg, y in zip(arms, targets, self.yaws)]
        ).astype(np.float32)


class SquareExpert(_PickExpert):
    """NutAssemblySquare: grasp the nut's handle with the fingers across it (hand yaw =
    nut yaw mod pi), lift, turn the nut so its sides line up with the square peg (which
    is axis-aligned) and its handle points back toward the robot or to the side (the peg
    is near the edge of the Panda's reach), carry the nut's centre over the peg, lower it
    down the peg and let go.

    The grasp yaw and the turn are planned together to keep the hand within the yaw
    range the Panda's wrist reaches from its start pose (about -1.9 to 3.5 rad). Two plans
    (``plan``):

    - ``least_turn`` (default): the grasp side and final handle direction that turn the hand
      least; the choice switches at 5 nut yaws (-117.5, -90, 17.5, 90, 101 deg).
    - ``two_switches``: the handle always ends toward the robot, grasped at hand yaw = nut yaw
      for nut yaws in [-45, 90) deg (the hand ends at 180 deg) and from the other side
      elsewhere (the hand ends at 0): the fewest switches the wrist range allows. A policy
      fails most from starts near a switch (scripts/square_failures.py).
    """

    PLANS = ("least_turn", "two_switches")
    OPTIONS = ("plan",)

    name = "rs_square"
    lift_height = 0.17
    place_tol = 0.004
    settle_speed = 0.003
    lower_step = 0.01
    lower_steps = 80
    PEG = np.array([0.23, 0.1, 0.0])  # peg1 (square), fixed in robosuite's PegsArena
    RELEASE_Z = 0.85  # nut centre height to let go at (it rests at 0.83; success < 0.87)
    HANDLE = 0.054  # handle centre, along the nut's x axis from its centre
    YAW_RANGE = (-1.7, 3.2)
    # final nut yaws (handle direction) and their cost in rad-equivalents: back toward
    # the robot (-x) is best, then toward -y (the robot's base is at y=0, the peg at 0.1)
    FINAL = ((np.pi, 0.0), (-np.pi / 2, 0.6), (np.pi / 2, 1.2))

    def __init__(self, plan: str = "least_turn"):
        if plan not in self.PLANS:
            raise EnvValueError(f"rs_square expert plan must be one of {self.PLANS}, got {plan!r}.")
        self.plan_name = plan
        super().__init__()

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self.plan = None  # (grasp hand yaw, final hand yaw, final nut yaw)

    def _plan(self, psi: float):
        """(grasp hand yaw, final hand yaw, final nut yaw) for nut yaw ``psi`` (rad)."""
        if self.plan_name == "two_switches":
            psi = wrap(psi, 2 * np.pi)
            if -np.pi / 4 <= psi < np.pi / 2:
                return psi, np.pi, np.pi
            return wrap(psi + np.pi, 2 * np.pi), 0.0, np.pi
        return self._least_turn_plan(psi)

    def _least_turn_plan(self, psi: float):
        lo, hi = self.YAW_RANGE
        best = None
        for k in range(-2, 3):
            g = psi + k * np.pi
            if not lo <= g <= hi:
                continue
            for psi_f, pen in self.FINAL:
                for n in range(-2, 3):
                    f = g + (psi_f + 2 * np.pi * n - psi)
                    if lo <= f <= hi:
                        cost = abs(g) + abs(f - g) + pen
                        if best is None or cost < best[0]:
                            best = (cost, g, f, psi_f)
        return best[1:]

    def grasp(self, obj):
        nut, psi = obj[7:10], yaw_of(obj[10:14])
        handle = nut + self.HANDLE * np.array([np.cos(psi), np.sin(psi), 0.0])
        if self.phase != "close":
            self.plan = self._plan(psi)
        return handle + [0, 0, 0.005], self.plan[0]

    def held_point(self, obj):
        return obj[7:10]

    def carry_yaw(self, obj):
        """The planned final hand yaw, corrected by how far the nut's yaw is still off."""
        _, f, psi_f = self.plan
        remaining_plan = f - self.hyaw
        off = psi_f - yaw_of(obj[10:14])
        remaining = remaining_plan + wrap(off - remaining_plan, 2 * np.pi)
        return self.hyaw + remaining

    def place(self, obj):
        return self.PEG, self.RELEASE_Z


EXPERTS = {
    "rs_square": SquareExpert,
    "rs_lift": LiftExpert,
    "rs_can": CanExpert,
    "rs_stack": StackExpert,
    "rs_two_arm_lift": TwoArmLiftExpert,
}


def expert(name: str, **options):
    """The scripted expert of robosuite task ``name`` (the registry calls this); ``options``: those its class
    lists in ``OPTIONS`` (rs_square's ``plan``)."""
    cls = EXPERTS[name]
    check_expert_options(name, options, getattr(cls, "OPTIONS", ()))
    return cls(**options)
