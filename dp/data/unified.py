"""RDT's unified, physically interpretable state/action space: one 128-d vector per time step
whose slots have fixed meanings, plus a validity mask for the slots a robot lacks.

Layout (RDT's ``configs/state_vec.py``; the left arm mirrors the right one 50 slots up):

    0-9     right arm joint positions (rad)          50-59   left arm joint positions
    10-14   right gripper; 10 = opening in [0, 1]    60-64   left gripper
    15-24   right arm joint velocities               65-74   left
    25-29   right gripper velocities                 75-79   left
    30-32   right EEF position (m, world)            80-82   left
    33-38   right EEF rotation, 6D (R[:, 0], R[:, 1]) 83-88  left
    39-41   right EEF linear velocity (m/s)          89-91   left
    42-44   right EEF angular velocity (rad/s)       92-94   left
    45-49   reserved                                 95-99   reserved
    100-102 base velocity (x, y, yaw)                103-127 reserved

Each ``Embodiment`` maps its stored state and its env actions into the space and back.

Actions. dp's arms are driven by delta end-effector commands (robosuite's OSC_POSE, Meta-World's
xyz mocap), so an action goes to the EEF velocity slots: the commanded change per control step
divided by the step's duration. The gripper command goes to the gripper slot as the commanded
opening (command -1 = open = 1.0, +1 = closed = 0.0), the same quantity the state reports there.
Why not the EEF position slots with a target pose: the command is relative, and its absolute
target is not recorded; a velocity is what it physically is.

State. Joint positions, gripper opening, EEF position and 6D rotation. Finger joints are summarised
by one opening in [0, 1] (slot 10, RDT's ``gripper_open``): a Panda has 2 finger joints, a
Robotiq 6 coupled ones, and only the opening means the same thing on both. So the state's way
back (``state_from_unified``) returns named physical quantities, not the raw finger joints.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dp.data.errors import DatasetError

UNIFIED_DIM = 128
LEFT_OFFSET = 50
# right-arm slots; the left arm's are LEFT_OFFSET higher
JOINT_POS = slice(0, 10)
GRIPPER_OPEN = 10
JOINT_VEL = slice(15, 25)
GRIPPER_VEL = 25
EEF_POS = slice(30, 33)
EEF_ROT6D = slice(33, 39)
EEF_LIN_VEL = slice(39, 42)
EEF_ANG_VEL = slice(42, 45)
BASE_VEL = slice(100, 103)


def _shift(s: slice | int, side: str) -> slice | int:
    off = LEFT_OFFSET if side == "left" else 0
    return s + off if isinstance(s, int) else slice(s.start + off, s.stop + off)


# ---------------------------------------------------------------- rotations (batched, numpy)
def quat_xyzw_to_matrix(q: np.ndarray) -> np.ndarray:
    """Quaternions [..., 4] (x, y, z, w; robosuite's order) -> rotation matrices [..., 3, 3]."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    x, y, z, w = np.moveaxis(q, -1, 0)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def matrix_to_quat_xyzw(m: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] -> unit quaternions [..., 4] (x, y, z, w) with w >= 0."""
    m = np.asarray(m, dtype=np.float64)
    # the largest of |w|, |x|, |y|, |z| from the diagonal picks a well-conditioned formula per item
    tr = np.trace(m, axis1=-2, axis2=-1)
    diag = np.diagonal(m, axis1=-2, axis2=-1)
    cand = np.stack([1 + 2 * diag[..., 0] - tr, 1 + 2 * diag[..., 1] - tr, 1 + 2 * diag[..., 2] - tr, 1 + tr], -1)
    best = cand.argmax(-1)
    s = np.sqrt(np.maximum(cand.max(-1), 1e-12))  # 2 * |the largest component|
    mij = lambda i, j: m[..., i, j]  # noqa: E731
    options = np.stack([
        np.stack([s / 2, (mij(0, 1) + mij(1, 0)) / (2 * s), (mij(0, 2) + mij(2, 0)) / (2 * s),
                  (mij(2, 1) - mij(1, 2)) / (2 * s)], -1),
        np.stack([(mij(0, 1) + mij(1, 0)) / (2 * s), s / 2, (mij(1, 2) + mij(2, 1)) / (2 * s),
                  (mij(0, 2) - mij(2, 0)) / (2 * s)], -1),
        np.stack([(mij(0, 2) + mij(2, 0)) / (2 * s), (mij(1, 2) + mij(2, 1)) / (2 * s), s / 2,
                  (mij(1, 0) - mij(0, 1)) / (2 * s)], -1),
        np.stack([(mij(2, 1) - mij(1, 2)) / (2 * s), (mij(0, 2) - mij(2, 0)) / (2 * s),
                  (mij(1, 0) - mij(0, 1)) / (2 * s), s / 2], -1),
    ], -2)
    q = np.take_along_axis(options, best[..., None, None], axis=-2)[..., 0, :]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., 3:] < 0, -q, q)


def matrix_to_rot6d(m: np.ndarray) -> np.ndarray:
    """[..., 3, 3] -> [..., 6]: the first two columns, (R[:, 0], R[:, 1]) (Zhou et al.'s 6D)."""
    return np.concatenate([m[..., :, 0], m[..., :, 1]], axis=-1)


def rot6d_to_matrix(r: np.ndarray) -> np.ndarray:
    """[..., 6] -> [..., 3, 3] by Gram-Schmidt (any 6 numbers give a rotation)."""
    a, b = r[..., :3], r[..., 3:6]
    c0 = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b - (c0 * b).sum(-1, keepdims=True) * c0
    c1 = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return np.stack([c0, c1, np.cross(c0, c1)], axis=-1)


# ---------------------------------------------------------------- grippers
@dataclass(frozen=True)
class Gripper:
    """Opening in [0, 1] (1 = open) from a gripper's stored joint positions: a linear map of
    ``sign . qpos`` between its closed and open values (the MuJoCo joint ranges)."""

    name: str
    qpos_dims: int
    weights: tuple[float, ...]  # opening coordinate = weights . qpos
    closed: float
    open: float

    def opening(self, qpos: np.ndarray) -> np.ndarray:
        width = np.asarray(qpos, np.float64)[..., : len(self.weights)] @ np.asarray(self.weights)
        return (width - self.closed) / (self.open - self.closed)


GRIPPERS = {
    # closed / open: the steady readings of each gripper commanded closed / open on an empty grasp in
    # robosuite 1.5.2 (fingertips touching / fully apart); tests/test_unified_space.py checks them
    "panda": Gripper("panda", 2, (1.0, -1.0), 0.0, 0.08),  # finger_joint1 - finger_joint2 (m)
    "rethink": Gripper("rethink", 2, (1.0, -1.0), -0.0237, 0.0225),  # l_finger - r_finger (m)
    # Robotiq: the driving finger_joint (rad) closes towards its range's end; the other 5 follow it
    "robotiq85": Gripper("robotiq85", 6, (1.0,), 0.52, -0.027),
    "robotiq140": Gripper("robotiq140", 6, (1.0,), 0.49, 0.014),
    # Meta-World's state already holds the finger distance / 0.1 m, clipped to [0, 1]
    "metaworld": Gripper("metaworld", 1, (1.0,), 0.0, 1.0),
}


# ---------------------------------------------------------------- embodiments
@dataclass(frozen=True)
class Arm:
    side: str  # right | left
    joints: int  # arm joints stored under ``joint_pos`` (0: none stored)
    gripper: str  # key of GRIPPERS


@dataclass(frozen=True)
class Embodiment:
    """One robot's map into the unified space.

    Stored state: ``agent_pos`` holds, per arm in order, EEF position [3] then (``quat`` True) EEF
    quaternion [4] (x, y, z, w), then the gripper's joints [qpos_dims]; ``joint_pos`` (when an arm
    has ``joints``) holds the arm joints, arm after arm. Actions: per arm, an EEF position delta
    [3], an axis-angle delta [3] when ``rotation``, and a gripper command [1] (-1 open, +1 close).
    ``pos_scale`` / ``rot_scale``: metres / radians of goal change per unit action per control step.
    """

    name: str
    arms: tuple[Arm, ...]
    control_hz: float
    pos_scale: float
    rot_scale: float = 0.0
    quat: bool = True
    rotation: bool = True
    description: str = ""
    state_keys: tuple[str, ...] = field(default=("agent_pos",))

    # -- sizes
    def _arm_state_dims(self, arm: Arm) -> int:
        return 3 + (4 if self.quat else 0) + GRIPPERS[arm.gripper].qpos_dims

    @property
    def agent_pos_dim(self) -> int:
        return sum(self._arm_state_dims(a) for a in self.arms)

    @property
    def joint_dim(self) -> int:
        return sum(a.joints for a in self.arms)

    @property
    def arm_action_dim(self) -> int:
        return 3 + (3 if self.rotation else 0) + 1

    @property
    def action_dim(self) -> int:
        return self.arm_action_dim * len(self.arms)

    # -- masks
    def state_mask(self) -> np.ndarray:
        """[128] bool: the slots this robot's state fills."""
        m = np.zeros(UNIFIED_DIM, bool)
        for arm in self.arms:
            m[_shift(slice(0, arm.joints), arm.side)] = True
            m[_shift(GRIPPER_OPEN, arm.side)] = True
            m[_shift(EEF_POS, arm.side)] = True
            if self.quat:
                m[_shift(EEF_ROT6D, arm.side)] = True
        return m

    def action_mask(self) -> np.ndarray:
        """[128] bool: the slots this robot's actions fill."""
        m = np.zeros(UNIFIED_DIM, bool)
        for arm in self.arms:
            m[_shift(EEF_LIN_VEL, arm.side)] = True
            if self.rotation:
                m[_shift(EEF_ANG_VEL, arm.side)] = True
            m[_shift(GRIPPER_OPEN, arm.side)] = True
        return m

    # -- checks
    def check_shapes(self, shapes: dict[str, tuple[int, ...]], source: str) -> None:
        """Raise a ``DatasetError`` unless ``shapes`` (key -> per-step shape, as a store or an env
        gives them) hold this robot's action and state."""
        need = {"action": self.action_dim, "agent_pos": self.agent_pos_dim}
        if self.joint_dim:
            need["joint_pos"] = self.joint_dim
        for key, dim in need.items():
            if key not in shapes:
                raise DatasetError(f"{source} has no '{key}', which embodiment '{self.name}' needs "
                                   f"({dim} numbers per step). Collect it with this version's dp-collect.")
            found = tuple(shapes[key])
            if found != (dim,):
                raise DatasetError(
                    f"{source}: '{key}' is {list(found)} per step, but embodiment '{self.name}' "
                    f"({self.description}) expects [{dim}]. Give the store the embodiment that collected it "
                    f"(known: {', '.join(EMBODIMENTS)}).")

    # -- state
    def state_to_unified(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """``agent_pos`` [..., P] (and ``joint_pos`` [..., J]) -> unified state [..., 128] (0 where
        ``state_mask`` is False)."""
        pos = np.asarray(obs["agent_pos"], np.float64)
        out = np.zeros(pos.shape[:-1] + (UNIFIED_DIM,))
        i, j = 0, 0
        joints = np.asarray(obs["joint_pos"], np.float64) if self.joint_dim else None
        for arm in self.arms:
            g = GRIPPERS[arm.gripper]
            out[..., _shift(EEF_POS, arm.side)] = pos[..., i : i + 3]
            i += 3
            if self.quat:
                out[..., _shift(EEF_ROT6D, arm.side)] = matrix_to_rot6d(quat_xyzw_to_matrix(pos[..., i : i + 4]))
                i += 4
            out[..., _shift(GRIPPER_OPEN, arm.side)] = g.opening(pos[..., i : i + g.qpos_dims])
            i += g.qpos_dims
            if arm.joints:
                out[..., _shift(slice(0, arm.joints), arm.side)] = joints[..., j : j + arm.joints]
                j += arm.joints
        return out

    def state_from_unified(self, vec: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Unified state [..., 128] -> per arm ``{"eef_pos", "eef_quat" (x, y, z, w; w >= 0),
        "gripper_open", "joint_pos"}`` in env units."""
        vec = np.asarray(vec, np.float64)
        arms = []
        for arm in self.arms:
            d = {"eef_pos": vec[..., _shift(EEF_POS, arm.side)],
                 "gripper_open": vec[..., _shift(GRIPPER_OPEN, arm.side)]}
            if self.quat:
                d["eef_quat"] = matrix_to_quat_xyzw(rot6d_to_matrix(vec[..., _shift(EEF_ROT6D, arm.side)]))
            if arm.joints:
                d["joint_pos"] = vec[..., _shift(slice(0, arm.joints), arm.side)]
            arms.append(d)
        return arms

    # -- actions
    def action_to_unified(self, action: np.ndarray) -> np.ndarray:
        """Env actions [..., A] -> unified [..., 128]: EEF velocities (m/s, rad/s) and the commanded
        gripper opening."""
        a = np.asarray(action, np.float64)
        if a.shape[-1] != self.action_dim:
            raise ValueError(f"embodiment '{self.name}' has {self.action_dim}-d actions, got {a.shape[-1]}.")
        out = np.zeros(a.shape[:-1] + (UNIFIED_DIM,))
        n = self.arm_action_dim
        for k, arm in enumerate(self.arms):
            part = a[..., k * n : (k + 1) * n]
            out[..., _shift(EEF_LIN_VEL, arm.side)] = part[..., :3] * self.pos_scale * self.control_hz
            if self.rotation:
                out[..., _shift(EEF_ANG_VEL, arm.side)] = part[..., 3:6] * self.rot_scale * self.control_hz
            out[..., _shift(GRIPPER_OPEN, arm.side)] = (1.0 - part[..., -1]) / 2.0
        return out

    def action_from_unified(self, vec: np.ndarray) -> np.ndarray:
        """Unified [..., 128] -> env actions [..., A] (the exact inverse of ``action_to_unified``)."""
        vec = np.asarray(vec, np.float64)
        parts = []
        for arm in self.arms:
            p = [vec[..., _shift(EEF_LIN_VEL, arm.side)] / (self.pos_scale * self.control_hz)]
            if self.rotation:
                p.append(vec[..., _shift(EEF_ANG_VEL, arm.side)] / (self.rot_scale * self.control_hz))
            p.append(1.0 - 2.0 * vec[..., _shift(GRIPPER_OPEN, arm.side), None])
            parts += p
        return np.concatenate(parts, axis=-1)


def _robosuite(name: str, joints: int, gripper: str, arms=("right",), description: str = "") -> Embodiment:
    # OSC_POSE at 20 Hz: 1 unit = 0.05 m / 0.5 rad of goal change per step (robosuite's osc_pose.json)
    return Embodiment(name, tuple(Arm(s, joints, gripper) for s in arms), control_hz=20.0, pos_scale=0.05,
                      rot_scale=0.5, description=description, state_keys=("agent_pos", "joint_pos"))


EMBODIMENTS: dict[str, Embodiment] = {
    "panda": _robosuite("panda", 7, "panda", description="robosuite Panda, 7 joints, OSC pose delta [7]"),
    "sawyer": _robosuite("sawyer", 7, "rethink", description="robosuite Sawyer, 7 joints, OSC pose delta [7]"),
    "iiwa": _robosuite("iiwa", 7, "robotiq140", description="robosuite IIWA, 7 joints, OSC pose delta [7]"),
    "ur5e": _robosuite("ur5e", 6, "robotiq85", description="robosuite UR5e, 6 joints, OSC pose delta [7]"),
    # robosuite's parallel TwoArmLift: both Pandas face +x, robot0 at y = -0.25 is the right arm
    "two_arm_panda": _robosuite("two_arm_panda", 7, "panda", arms=("right", "left"),
                                description="robosuite TwoArmLift, two Pandas, [right 7, left 7]"),
    # Meta-World's Sawyer: xyz mocap, 1 unit = 1 cm per step of 5 x 2.5 ms (80 Hz); no rotation
    "metaworld": Embodiment("metaworld", (Arm("right", 0, "metaworld"),), control_hz=80.0, pos_scale=0.01,
                            quat=False, rotation=False,
                            description="Meta-World Sawyer, hand xyz + gripper [4], xyz delta + grip [4]"),
}

def embodiment(name: str) -> Embodiment:
    """The map called ``name``; an unknown name is a ``DatasetError`` listing the known ones."""
    if name not in EMBODIMENTS:
        raise DatasetError(f"no unified-space map for embodiment {name!r}; known: {', '.join(EMBODIMENTS)}. "
                           "Add one to dp/data/unified.py (EMBODIMENTS) for a new robot.")
    return EMBODIMENTS[name]
