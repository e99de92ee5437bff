"""The `pusht` family: gym_pusht's Push-T with dict obs, seeded starts and a scripted expert."""
import numpy as np
import pytest

pytest.importorskip("gym_pusht")

from dp import envs  # noqa: E402
from dp.envs import pusht  # noqa: E402
from dp.envs.rollout import run_expert_episode  # noqa: E402


def test_names_resolve():
    assert "pusht" in envs.task_names()
    assert envs.task_set("pusht") == ("pusht",)
    assert envs.task_info("pusht")["instruction"] == "push the T-shaped block onto the T-shaped target"


def test_obs_layout_and_step():
    env = envs.make("pusht")
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (5,)
    assert info["instruction"] == env.unwrapped.instruction and info["is_success"] is False
    inner = env.unwrapped._env
    np.testing.assert_allclose(obs["state"][:2], inner.agent.position, atol=1e-3)  # agent x, y
    np.testing.assert_allclose(obs["state"][2:4], inner.block.position, atol=1e-3)  # block x, y
    np.testing.assert_allclose(obs["state"][4], inner.block.angle % (2 * np.pi), atol=1e-5)
    assert env.action_space.shape == (2,) and env.action_space.dtype == np.float32
    assert env.action_space.low.min() == 0 and env.action_space.high.max() == 512
    # the action is the agent's target: a few steps bring the disc close to it
    target = np.array([100.0, 450.0], dtype=np.float32)
    for _ in range(10):
        obs, reward, terminated, truncated, info = env.step(target)
    assert np.linalg.norm(obs["state"][:2] - target) < 5
    assert isinstance(info["is_success"], bool) and 0 <= info["coverage"] <= 1 and not truncated
    env.close()


def test_keypoints_are_the_t_corners_at_the_block_pose():
    """``keypoint`` is the T's 8 corners placed by the block's pose: brought back into the block's frame
    they are the same points for every start, and they move with the block."""
    env = envs.make("pusht")
    local = []
    for seed in (0, 1, 2):
        obs, _ = env.reset(seed=seed)
        assert env.observation_space.contains(obs) and obs["keypoint"].shape == (16,)
        x, y, angle = obs["state"][2:].astype(np.float64)
        c, s = np.cos(angle), np.sin(angle)
        points = obs["keypoint"].reshape(8, 2).astype(np.float64) - [x, y]
        local.append(points @ np.array([[c, -s], [s, c]]))  # rows: R(-angle) @ p
    np.testing.assert_allclose(local[1], local[0], atol=1e-2)
    np.testing.assert_allclose(local[2], local[0], atol=1e-2)
    assert np.ptp(local[0][:, 0]) == pytest.approx(120, abs=1)  # the bar: 120 px wide
    env.close()


def test_seed_fixes_start():
    env = envs.make("pusht")
    a, _ = env.reset(seed=5)
    env.step(np.array([256, 256], dtype=np.float32))
    b, _ = env.reset(seed=6)
    c, _ = env.reset(seed=5)
    np.testing.assert_array_equal(a["state"], c["state"])
    assert not np.allclose(a["state"], b["state"])
    d, _ = envs.make("pusht").reset(seed=5)
    np.testing.assert_array_equal(a["state"], d["state"])


def test_truncation():
    env = envs.make("pusht", max_episode_steps=3)
    env.reset(seed=0)
    flags = [env.step(np.array([256, 256], dtype=np.float32))[3] for _ in range(3)]
    assert flags == [False, False, True]
    assert envs.make("pusht").max_episode_steps == 300


def test_image_obs():
    env = envs.make("pusht", obs="image")
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs) and "state" in obs
    img = obs["image"]
    assert img.shape == (96, 96, 3) and img.dtype == np.uint8 and img.std() > 10
    again, _ = env.reset(seed=0)
    assert np.array_equal(again["image"], img)
    frame = env.render()
    assert frame.shape == (384, 384, 3) and frame.dtype == np.uint8


def test_expert_succeeds():
    env = envs.make("pusht")
    expert = envs.expert("pusht")
    for seed in (0, 1):
        ep = run_expert_episode(env, expert, seed)
        assert ep.success, seed
        assert len(ep) < env.max_episode_steps
        assert ep.action.dtype == np.float32 and ep.action.min() >= 0 and ep.action.max() <= 512


def test_score_is_the_best_clipped_coverage_so_far():
    """Diffusion Policy's PushT figure: max over the episode of clip(coverage / 0.95, 0, 1)."""
    env = envs.make("pusht")
    expert = envs.expert("pusht")
    obs, _ = env.reset(seed=0)
    expert.reset()
    best, scores = 0.0, []
    for _ in range(60):
        obs, reward, terminated, _, info = env.step(expert.act(obs))
        best = max(best, min(info["coverage"] / 0.95, 1.0))
        assert info["score"] == pytest.approx(best) and reward == pytest.approx(min(info["coverage"] / 0.95, 1.0))
        scores.append(info["score"])
        if terminated:
            break
    assert scores == sorted(scores) and scores[-1] > 0
    obs, _ = env.reset(seed=1)  # a new episode starts its own maximum
    info = env.step(obs["agent_pos"])[4]
    assert info["score"] == pytest.approx(min(info["coverage"] / 0.95, 1.0))
    assert info["score"] < scores[-1]


def test_bad_options():
    with pytest.raises(TypeError, match="image_size"):
        envs.make("pusht", imagesize=64)
    with pytest.raises(ValueError, match="obs"):
        envs.make("pusht", obs="pixels")
    assert pusht.instruction("pusht") == pusht.INSTRUCTION
