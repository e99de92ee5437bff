"""The `mw` family: 50 Meta-World v3 tasks with dict obs, seeded scenes and scripted experts."""
import numpy as np
import pytest

pytest.importorskip("metaworld")

from dp import envs  # noqa: E402
from dp.envs import metaworld_tasks as mwt  # noqa: E402
from dp.envs.rollout import run_expert_episode  # noqa: E402


def test_names_match_metaworld():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS, MT10_V3
    from metaworld.policies import ENV_POLICY_MAP

    assert len(mwt.NAMES) == 50
    assert sorted(mwt.NAMES) == sorted(mwt.dp_name(k) for k in ALL_V3_ENVIRONMENTS)
    assert set(ENV_POLICY_MAP) == set(ALL_V3_ENVIRONMENTS)
    assert list(mwt.SETS["mt10"]) == [mwt.dp_name(k) for k in MT10_V3]
    assert mwt.dp_name("button-press-topdown-v3") == "mw_button_press_topdown"
    assert mwt.mw_name("mw_pick_place") == "pick-place-v3"
    assert set(mwt.INSTRUCTIONS) == set(mwt.NAMES)
    assert len(set(mwt.INSTRUCTIONS.values())) == 50


def test_task_sets():
    mt10 = envs.task_set("mt10")
    assert len(mt10) == 10 and "mw_push" in mt10 and "mw_pick_place" in mt10
    assert len(envs.task_set("mt50")) == 50
    assert set(mt10) <= set(envs.task_set("mt50"))
    assert envs.task_info("mw_push")["instruction"] == "push the puck to the goal"


def test_all_tasks_make_and_step():
    for name in mwt.NAMES:
        env = envs.make(name)
        obs, info = env.reset(seed=0)
        assert env.observation_space.contains(obs), name
        assert obs["state"].dtype == np.float32 and obs["state"].shape == (39,)
        assert np.any(obs["state"][-3:] != 0), f"{name}: goal not observable"
        assert info["instruction"] == env.unwrapped.instruction and info["is_success"] is False
        assert env.action_space.shape == (4,) and env.action_space.dtype == np.float32
        obs, _, terminated, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs), name
        assert isinstance(info["is_success"], bool) and not truncated
        env.close()


def test_seed_fixes_scene():
    env = envs.make("mw_pick_place")
    a, _ = env.reset(seed=3)
    for _ in range(5):
        env.step(np.ones(4, dtype=np.float32))
    b, _ = env.reset(seed=4)
    c, _ = env.reset(seed=3)
    np.testing.assert_array_equal(a["state"], c["state"])
    assert not np.allclose(a["state"], b["state"])
    other = envs.make("mw_pick_place")
    d, _ = other.reset(seed=3)
    np.testing.assert_array_equal(a["state"], d["state"])
    # unseeded resets still vary
    e, _ = env.reset()
    f, _ = env.reset()
    assert not np.allclose(e["state"], f["state"])


def test_truncation_and_step_limit():
    env = envs.make("mw_reach", max_episode_steps=3)
    env.reset(seed=0)
    flags = [env.step(np.zeros(4, dtype=np.float32))[3] for _ in range(3)]
    assert flags == [False, False, True]
    assert envs.make("mw_reach").max_episode_steps == 500


def test_image_obs_upright_and_seeded():
    env = envs.make("mw_push", obs="image", image_size=64)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    img = obs["image"]
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert img.std() > 10, "blank image"
    other, _ = env.reset(seed=1)
    again, _ = env.reset(seed=0)
    assert np.array_equal(again["image"], img)
    assert not np.array_equal(other["image"], img)
    frame = env.render()
    assert frame.shape == (224, 224, 3) and frame.dtype == np.uint8
    env.close()


def test_image_is_upright_not_mirrored():
    # metaworld's corner camera is mounted upside down; the env rotates its frames by 180
    # degrees. Upright, the red Sawyer arm stands in the upper right of the frame (the raw
    # frame has it lower left; a mere vertical flip would put it upper left, mirrored).
    env = envs.make("mw_reach", obs="image", image_size=64, camera="corner")
    img = env.reset(seed=0)[0]["image"].astype(int)
    red = (img[..., 0] > 120) & (img[..., 1] < 60) & (img[..., 2] < 60)
    rows, cols = np.nonzero(red)
    assert len(rows) > 50
    assert rows.mean() < 32 and cols.mean() > 32
    env.close()


def test_workspace_camera_shows_the_goal_where_it_is():
    # The default camera frames the table: mw_push's green goal site is visible in every
    # scene, and its image column follows its x in the world.
    env = envs.make("mw_push", obs="image")
    cols = []
    for seed in range(4):
        obs, _ = env.reset(seed=seed)
        img = obs["image"].astype(int)
        green = (img[..., 1] > 150) & (img[..., 0] < 100) & (img[..., 2] < 100)
        assert green.sum() >= 4, f"goal not visible for seed {seed}"
        cols.append((np.nonzero(green)[1].mean(), obs["state"][-3]))
    cols.sort(key=lambda c: c[1])  # by goal x
    image_cols = [c[0] for c in cols]
    assert image_cols == sorted(image_cols) and image_cols[-1] - image_cols[0] > 15, cols
    env.close()


@pytest.mark.parametrize("name", ["mw_push", "mw_drawer_open", "mw_box_close", "mw_soccer"])
def test_expert_succeeds(name):
    env = envs.make(name)
    expert = envs.expert(name)
    for seed in (0, 1):
        ep = run_expert_episode(env, expert, seed)
        assert ep.success, (name, seed)
        assert len(ep) < env.max_episode_steps
        assert ep.action.dtype == np.float32 and np.abs(ep.action).max() <= 1.0


def test_bad_options():
    with pytest.raises(TypeError, match="image_size"):
        envs.make("mw_push", imagesize=64)
    with pytest.raises(ValueError, match="obs"):
        envs.make("mw_push", obs="pixels")
    with pytest.raises(ValueError, match="camera"):
        envs.make("mw_push", camera="nope")
    with pytest.raises(KeyError, match="mw_psuh"):
        envs.make("mw_psuh")
