"""The `rs` family: robosuite tasks with dict obs, seeded scenes and scripted experts."""
import numpy as np
import pytest

pytest.importorskip("robosuite")

from dp import envs  # noqa: E402
from dp.envs import robosuite_tasks as rst  # noqa: E402
from dp.envs.rollout import run_expert_episode  # noqa: E402


@pytest.fixture(scope="module")
def lift():
    env = envs.make("rs_lift")
    yield env
    env.close()


def test_names_resolve():
    assert set(rst.NAMES) == {"rs_lift", "rs_can", "rs_square", "rs_stack", "rs_two_arm_lift"}
    assert set(rst.NAMES) <= set(envs.task_names())
    assert envs.task_set("rs_can") == ("rs_can",)
    info = envs.task_info("rs_stack")
    assert info["family"] == "dp.envs.robosuite_tasks" and "cube" in info["instruction"]
    assert len({rst.instruction(n) for n in rst.NAMES}) == len(rst.NAMES)


PANDA_STATE_DIMS = {"rs_lift": 19, "rs_can": 23, "rs_square": 23, "rs_stack": 32, "rs_two_arm_lift": 37}


@pytest.mark.parametrize("name", rst.NAMES)
def test_make_and_step(name):
    env = envs.make(name)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs), name
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (PANDA_STATE_DIMS[name],)
    assert info["instruction"] == env.unwrapped.instruction and info["is_success"] is False
    # documented layout: proprio first, robosuite's object-state last
    keys = [k for k, _ in env.unwrapped.state_keys]
    assert keys[:3] == ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"]
    assert sum(n for _, n in env.unwrapped.state_keys) == env.unwrapped.state_dim
    raw = env.unwrapped._env._get_observations()
    np.testing.assert_allclose(obs["state"][-rst.OBJECT_DIMS[name] :], raw["object-state"], atol=1e-5)
    np.testing.assert_allclose(obs["state"][:3], raw["robot0_eef_pos"], atol=1e-5)
    arms = 2 if name == "rs_two_arm_lift" else 1
    assert env.action_space.shape == (7 * arms,) and env.action_space.dtype == np.float32
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs)
    assert isinstance(info["is_success"], bool) and not truncated and isinstance(reward, float)
    env.close()


def test_seed_fixes_scene(lift):
    a, _ = lift.reset(seed=3)
    for _ in range(5):
        lift.step(np.ones(7, dtype=np.float32))
    b, _ = lift.reset(seed=4)
    c, _ = lift.reset(seed=3)
    np.testing.assert_array_equal(a["state"], c["state"])
    assert not np.allclose(a["state"], b["state"])
    other = envs.make("rs_can")
    d, _ = other.reset(seed=3)
    e, _ = other.reset(seed=3)
    np.testing.assert_array_equal(d["state"], e["state"])
    f, _ = other.reset()  # unseeded resets go on varying
    g, _ = other.reset()
    assert not np.allclose(f["state"], g["state"])
    other.close()


def test_truncation(lift):
    env = envs.make("rs_lift", max_episode_steps=3)
    env.reset(seed=0)
    flags = [env.step(np.zeros(7, dtype=np.float32))[3] for _ in range(3)]
    assert flags == [False, False, True]
    assert lift.max_episode_steps == rst.TASKS["rs_lift"]["steps"]
    env.close()


def test_image_obs_upright():
    env = envs.make("rs_lift", obs="image", image_size=64)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs) and "state" in obs
    img = obs["image"]
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert img.std() > 10, "blank image"
    # agentview: the white table fills the bottom of an upright frame, the robot and the
    # grey floor the top; the red cube sits near the middle
    gray = img.astype(float).mean(axis=2)
    assert gray[-16:].mean() > gray[:16].mean() + 20
    red = (img[..., 0] > 120) & (img[..., 1] < 80) & (img[..., 2] < 80)
    assert red.sum() > 3
    again, _ = env.reset(seed=0)
    assert np.array_equal(again["image"], img)
    frame = env.render()
    assert frame.shape == (256, 256, 3) and frame.dtype == np.uint8
    env.close()


def test_render_in_state_mode(lift):
    lift.reset(seed=0)
    frame = lift.render(size=48)
    assert frame.shape == (48, 48, 3) and frame.dtype == np.uint8 and frame.std() > 10


def test_expert_succeeds_lift(lift):
    expert = envs.expert("rs_lift")
    for seed in (0, 1):
        ep = run_expert_episode(lift, expert, seed)
        assert ep.success, seed
        assert len(ep) < lift.max_episode_steps
        assert ep.action.dtype == np.float32 and np.abs(ep.action).max() <= 1.0


def test_sawyer_robot():
    env = envs.make("rs_lift", robot="Sawyer")
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs) and obs["state"].shape == (19,)
    assert env.unwrapped._env.robots[0].name == "Sawyer"
    ep = run_expert_episode(env, envs.expert("rs_lift"), 0)
    assert ep.success
    env.close()


def test_bad_options():
    with pytest.raises(TypeError, match="image_size"):
        envs.make("rs_lift", imagesize=64)
    with pytest.raises(ValueError, match="obs"):
        envs.make("rs_lift", obs="pixels")
    with pytest.raises(ValueError, match="robot"):
        envs.make("rs_lift", robot="Pandaa")
    with pytest.raises(ValueError, match="camera"):
        envs.make("rs_lift", camera="nope")
    with pytest.raises(KeyError, match="rs_lift"):
        envs.make("rs_lfit")


def test_square_expert_plans_switch_where_documented_and_stay_in_wrist_range():
    """rs_square's expert chooses its grasp side and final nut yaw from the nut's yaw; least_turn switches that
    choice at 5 yaws, two_switches at 2, and every plan keeps the hand in the wrist's yaw range."""
    from dp.envs.robosuite_experts import SquareExpert, wrap

    def switches(plan):
        expert, found, prev = SquareExpert(plan), [], None
        lo, hi = expert.YAW_RANGE
        for deg in np.arange(-180, 180, 0.5):
            psi = np.radians(deg)
            grasp, final, nut_final = expert._plan(psi)
            assert lo <= grasp <= hi and lo <= final <= hi, (plan, deg)
            assert abs(wrap(grasp - psi, np.pi)) < 1e-9  # the fingers close across the handle
            assert abs(wrap(final - grasp - (nut_final - psi), 2 * np.pi)) < 1e-9  # the nut turns with the hand
            choice = (round(np.degrees(grasp) - deg) % 360, round(np.degrees(nut_final)) % 360)
            if prev is not None and choice != prev:
                found.append(float(deg))
            prev = choice
        return found

    assert switches("least_turn") == [-117.5, -90.0, 17.5, 90.0, 101.0]
    assert switches("two_switches") == [-45.0, 90.0]


def test_expert_options_are_checked():
    with pytest.raises(ValueError, match="plan must be one of"):
        envs.expert("rs_square", plan="fastest")
    with pytest.raises(TypeError, match="takes only plan; got \\['speed'\\]"):
        envs.expert("rs_square", speed=2)
    with pytest.raises(TypeError, match="takes no options"):
        envs.expert("rs_can", plan="two_switches")


def test_square_expert_with_two_switches_succeeds(capsys):
    """Through the expert-success CLI, which passes --expert-option to the expert and reports it."""
    import json

    from dp.envs.rollout import main

    main(["rs_square", "--episodes", "2", "--expert-option", "plan=two_switches"])
    row = json.loads(capsys.readouterr().out)
    assert row["expert_options"] == {"plan": "two_switches"}
    assert row["success_rate"] == 1.0 and row["mean_length"] < 300, row
