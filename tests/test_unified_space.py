"""RDT's unified state/action space: the slots mean what the layout says on real envs, and every
embodiment's actions go in and come back exactly."""
import numpy as np
import pytest

from dp import envs
from dp.data import DatasetError
from dp.data.unified import (
    EEF_LIN_VEL, EEF_POS, EEF_ROT6D, EMBODIMENTS, GRIPPER_OPEN, LEFT_OFFSET, UNIFIED_DIM, embodiment,
    matrix_to_quat_xyzw, matrix_to_rot6d, quat_xyzw_to_matrix, rot6d_to_matrix,
)

ROBOSUITE = [("panda", "rs_lift", {"robot": "Panda"}), ("sawyer", "rs_lift", {"robot": "Sawyer"}),
             ("iiwa", "rs_lift", {"robot": "IIWA"}), ("ur5e", "rs_lift", {"robot": "UR5e"}),
             ("two_arm_panda", "rs_two_arm_lift", {})]


def _random_rotations(n, rng):
    q = rng.normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def test_rotation_helpers_round_trip_and_give_rotations():
    rng = np.random.default_rng(0)
    q = _random_rotations(500, rng)
    q = np.where(q[:, 3:] < 0, -q, q)  # the canonical sign the inverse returns
    m = quat_xyzw_to_matrix(q)
    np.testing.assert_allclose(m @ np.swapaxes(m, -1, -2), np.broadcast_to(np.eye(3), m.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(m), 1.0, atol=1e-12)
    np.testing.assert_allclose(matrix_to_quat_xyzw(rot6d_to_matrix(matrix_to_rot6d(m))), q, atol=1e-9)
    # robosuite's "hand down" orientation, x forward: R = diag(1, -1, -1) is the quaternion (1, 0, 0, 0)
    np.testing.assert_allclose(quat_xyzw_to_matrix(np.array([1.0, 0, 0, 0])), np.diag([1.0, -1, -1]))


@pytest.mark.parametrize("name,task,options", ROBOSUITE)
def test_robosuite_state_fills_the_slots_the_layout_names(name, task, options):
    env = envs.make(task, **options)
    emb = embodiment(name)
    assert env.unwrapped.embodiment == name
    obs, _ = env.reset(seed=3)
    emb.check_shapes({k: v.shape for k, v in obs.items()} | {"action": env.action_space.shape}, task)
    for _ in range(5):
        obs, *_ = env.step(env.action_space.sample() * 0.3)
    vec = emb.state_to_unified(obs)
    assert vec.shape == (UNIFIED_DIM,)
    assert not vec[~emb.state_mask()].any()  # nothing outside the mask
    sl = env.unwrapped.state_slices
    raw = {k: obs["state"][sl[k]] for k in sl}
    joints = np.split(obs["joint_pos"], len(emb.arms))
    raw.update({f"robot{i}_joint_pos": j for i, j in enumerate(joints)})
    arms = emb.state_from_unified(vec)
    for i, arm in enumerate(emb.arms):
        off = LEFT_OFFSET if arm.side == "left" else 0
        np.testing.assert_allclose(vec[EEF_POS.start + off:EEF_POS.stop + off], raw[f"robot{i}_eef_pos"], atol=1e-6)
        rot = quat_xyzw_to_matrix(raw[f"robot{i}_eef_quat"])
        np.testing.assert_allclose(vec[EEF_ROT6D.start + off:EEF_ROT6D.stop + off], matrix_to_rot6d(rot), atol=1e-6)
        np.testing.assert_allclose(vec[off:off + arm.joints], raw[f"robot{i}_joint_pos"], atol=1e-6)
        np.testing.assert_allclose(arms[i]["joint_pos"], raw[f"robot{i}_joint_pos"], atol=1e-6)
        np.testing.assert_allclose(quat_xyzw_to_matrix(arms[i]["eef_quat"]), rot, atol=1e-6)
        assert -0.05 <= vec[GRIPPER_OPEN + off] <= 1.05
    if name == "two_arm_panda":  # robot0 stands at y = -0.25: facing +x, that is the right arm
        assert vec[EEF_POS.start + 1] < 0 < vec[EEF_POS.start + 1 + LEFT_OFFSET]
    env.close()


@pytest.mark.parametrize("name,task,options", ROBOSUITE[:4])
def test_gripper_opening_reads_open_then_closed(name, task, options):
    """Slot 10 means the same on a Panda's two fingers and a Robotiq's six joints."""
    env = envs.make(task, **options)
    emb = embodiment(name)
    env.reset(seed=0)
    reading = {}
    for command in (-1.0, 1.0):  # open, then close
        action = np.zeros(7, np.float32)
        action[-1] = command
        for _ in range(15):
            obs, *_ = env.step(action)
        reading[command] = emb.state_to_unified(obs)[GRIPPER_OPEN]
    assert reading[-1.0] > 0.85 and reading[1.0] < 0.15, reading
    env.close()


@pytest.mark.parametrize("name", sorted(EMBODIMENTS))
def test_actions_round_trip_exactly_and_fill_only_their_mask(name):
    emb = EMBODIMENTS[name]
    a = np.random.default_rng(1).uniform(-1, 1, size=(6, 16, emb.action_dim))
    vec = emb.action_to_unified(a)
    assert vec.shape == (6, 16, UNIFIED_DIM)
    assert not vec[..., ~emb.action_mask()].any()
    np.testing.assert_allclose(emb.action_from_unified(vec), a, atol=1e-12)
    # open (-1) is an opening of 1, close (+1) of 0: the state's meaning of the slot
    grip = np.zeros(emb.action_dim)
    grip[emb.arm_action_dim - 1] = -1.0
    assert emb.action_to_unified(grip)[GRIPPER_OPEN] == 1.0


def test_metaworld_action_slots_are_the_hand_velocity_in_metres_per_second():
    env = envs.make("mw_reach")
    emb = embodiment(env.unwrapped.embodiment)
    obs, _ = env.reset(seed=0)
    emb.check_shapes({k: v.shape for k, v in obs.items()} | {"action": env.action_space.shape}, "mw_reach")
    action = np.array([0.5, 0.0, 0.0, 0.0], np.float32)
    for _ in range(20):  # the hand follows its mocap target with a lag of about 10 steps
        obs, *_ = env.step(action)
    start, steps = obs["agent_pos"][:3].copy(), 10
    for _ in range(steps):
        obs, *_ = env.step(action)
    measured = (obs["agent_pos"][:3] - start) * emb.control_hz / steps  # m/s, steady state
    commanded = emb.action_to_unified(action)[EEF_LIN_VEL]
    np.testing.assert_allclose(measured, commanded, atol=0.04)
    assert commanded[0] == pytest.approx(0.4)
    env.close()


def test_unknown_embodiment_and_mismatched_store_are_clear_errors():
    with pytest.raises(DatasetError, match=r"no unified-space map for embodiment 'franka'; known: panda"):
        embodiment("franka")
    with pytest.raises(DatasetError, match=r"'action' is \[4\] per step, but embodiment 'panda'.*expects \[7\]"):
        embodiment("panda").check_shapes({"action": (4,), "agent_pos": (9,), "joint_pos": (7,)}, "data/mw_push.zarr")
    with pytest.raises(DatasetError, match=r"has no 'joint_pos'"):
        embodiment("ur5e").check_shapes({"action": (7,), "agent_pos": (13,)}, "old.zarr")
