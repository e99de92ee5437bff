"""Rollout videos play in real time: one frame per env.step, written at the env's control rate.

Before, every video was written at 20 fps, so Meta-World (one step = 12.5 ms of simulation,
80 steps per second) played 4x slow and Push-T (10 Hz) 2x fast.
"""
import importlib.util
import math

import numpy as np
import pytest
import torch

from dp import envs
from dp.eval import rollout


def _needs(module: str):
    return pytest.mark.skipif(importlib.util.find_spec(module) is None, reason=f"{module} not installed")


def _step_seconds(task: str, env) -> float | None:
    """Simulated seconds one env.step advances, read from the simulator itself (None: no physical time)."""
    inner = env.unwrapped._env if task != "toy" else None
    if task.startswith("mw_"):
        return inner.frame_skip * inner.model.opt.timestep  # metaworld: one step = frame_skip physics steps
    if task.startswith("rs_"):
        return inner.control_timestep  # robosuite: 1 / control_freq
    if task == "pusht":
        pusht = getattr(inner, "unwrapped", inner)
        return pusht.dt * int(1 / (pusht.dt * pusht.control_hz))  # pymunk substeps per step
    return None


@pytest.mark.parametrize(
    "task, expected",
    [
        pytest.param("mw_reach", 80, marks=_needs("metaworld")),
        pytest.param("rs_lift", 20, marks=_needs("robosuite")),
        pytest.param("pusht", 10, marks=_needs("gym_pusht")),
        ("toy", 20),
    ],
)
def test_env_fps_is_the_real_step_rate(task, expected):
    env = envs.make(task)
    try:
        fps = rollout.env_fps(env)
        assert fps == expected
        dt = _step_seconds(task, env)
        if dt is not None:
            assert math.isclose(fps * dt, 1.0, rel_tol=1e-9), f"{task}: render_fps {fps} but a step is {dt} s"
    finally:
        env.close()


class _ZeroPolicy:
    """The least run_episodes needs: zero actions, one env step's observation at a time."""

    needs_prediction = False

    def __init__(self, action_dim: int):
        self.action_dim = action_dim

    def eval(self):
        return self

    def reset(self):
        pass

    def select_action(self, obs):
        return torch.zeros(len(obs["instruction"]), self.action_dim)


@pytest.mark.parametrize(
    "task, action_dim, fps",
    [
        pytest.param("mw_reach", 4, 80, marks=_needs("metaworld")),
        pytest.param("pusht", 2, 10, marks=_needs("gym_pusht")),
    ],
)
def test_rollout_video_plays_in_real_time(tmp_path, task, action_dim, fps):
    import imageio.v2 as imageio

    steps = 3
    out = rollout.run_episodes(_ZeroPolicy(action_dim), task, [1000], {}, n_envs=1, max_steps=steps,
                               n_videos=1, video_dir=tmp_path, progress=False)
    (path,) = out["videos"]
    reader = imageio.get_reader(path)
    try:
        meta = reader.get_meta_data()
        n_frames = reader.count_frames()
    finally:
        reader.close()
    assert n_frames == steps + 1  # the reset frame, then one per step
    assert meta["fps"] == fps != 20
    assert np.isclose(meta["duration"], n_frames / fps, atol=1.5 / fps)


def test_a_video_that_cannot_be_written_warns_and_keeps_the_results(tmp_path, monkeypatch):
    import imageio.v2 as imageio
    import numpy as np
    import pytest

    from dp.eval.rollout import write_videos

    def fork_fails(*a, **k):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(imageio, "mimsave", fork_fails)
    frames = [np.zeros((8, 8, 3), np.uint8)] * 3
    with pytest.warns(UserWarning, match="results are kept"):
        assert write_videos([(1, True, frames)], tmp_path, "toy", fps=10) == []
