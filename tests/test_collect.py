import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from dp.collect import collect
from dp.constants import EVAL_SEED_BASE
from dp.data import DatasetError, ReplayBuffer

REPO = Path(__file__).resolve().parents[1]
DP_COLLECT = [sys.executable, "-m", "dp.collect"]


def _cfg(tmp_path, **kw):
    cfg = {
        "task": {"name": "toy", "env": "toy", "env_options": {}},
        "n_episodes": 6,
        "obs": "state",
        "image_size": None,
        "output": str(tmp_path / "toy.zarr"),
        "seed": 0,
        "keep_failed": False,
        "max_attempts_factor": 3,
        "overwrite": False,
        "progress": False,
    }
    cfg.update(kw)
    return cfg


def test_collect_toy_state_and_image(tmp_path):
    summary = collect(_cfg(tmp_path))
    buf = ReplayBuffer.open(tmp_path / "toy.zarr")
    assert buf.n_episodes == 6 and buf["state"].shape[1] == 4 and buf["action"].shape[1] == 2
    attrs = dict(zarr.open_group(str(tmp_path / "toy.zarr"), mode="r").attrs)
    assert attrs["tasks"] == ["toy"] and "obstacle" in attrs["instructions"][0]
    assert attrs["episode_seeds"] == list(range(6)) and attrs["seeds"] == list(range(6))
    assert attrs["expert_success_rate"] == summary["expert_success_rate"] == 1.0
    assert attrs["dp_version"] and attrs["env_options"] == {"obs": "state"} and attrs["expert_options"] == {}
    assert max(attrs["seeds"]) < EVAL_SEED_BASE

    collect(_cfg(tmp_path, obs="image", image_size=32, output=str(tmp_path / "img.zarr")))
    img_buf = ReplayBuffer.open(tmp_path / "img.zarr")
    img = img_buf["img"]
    assert img.shape[1:] == (32, 32, 3) and img.dtype == np.uint8 and img.chunks[0] == 1
    np.testing.assert_array_equal(img_buf["agent_pos"][:], img_buf["state"][:, :2])


def test_collect_is_repeatable_and_refuses_to_overwrite(tmp_path):
    collect(_cfg(tmp_path))
    with pytest.raises(DatasetError, match="already exists"):
        collect(_cfg(tmp_path))
    collect(_cfg(tmp_path, output=str(tmp_path / "again.zarr")))
    a = ReplayBuffer.open(tmp_path / "toy.zarr")["action"][:]
    b = ReplayBuffer.open(tmp_path / "again.zarr")["action"][:]
    np.testing.assert_array_equal(a, b)


def test_bad_config_values_are_named(tmp_path):
    with pytest.raises(DatasetError, match="n_episodes: expected an integer >= 1, found 0"):
        collect(_cfg(tmp_path, n_episodes=0))
    with pytest.raises(DatasetError, match="obs: expected 'state' or 'image', found 'rgb'"):
        collect(_cfg(tmp_path, obs="rgb"))
    assert not (tmp_path / "toy.zarr").exists()


def test_cli_and_interrupted_collection_leaves_no_store(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "cli.zarr"
    done = subprocess.run(
        DP_COLLECT + ["task=toy", "n_episodes=3", f"output={out}", "progress=false"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[0])["episodes"] == 3
    assert not list(tmp_path.glob("*.log")) and not (tmp_path / "outputs").exists()

    bad = subprocess.run(DP_COLLECT + ["task=toy", "n_episodes=-1", f"output={tmp_path / 'x.zarr'}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "n_episodes" in bad.stderr

    big = tmp_path / "big.zarr"
    proc = subprocess.Popen(DP_COLLECT + ["task=toy", "n_episodes=100000", f"output={big}", "progress=false"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not list(tmp_path.glob("big.zarr.tmp-*")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # mid-collection
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert not big.exists(), "an interrupted collection must not leave a store under the output name"
    assert not list(tmp_path.glob("big.zarr.tmp-*")), "Ctrl-C cleans up its temporary store"


def test_pusht_store_keeps_the_t_keypoints_for_a_keypoint_policy(tmp_path):
    """PushT stores ``keypoint`` beside ``state``; ``obs_keys={state: [agent_pos, keypoint]}`` reads the
    low-dim observation Diffusion Policy's PushT policy uses (agent + the T's corners, 18 numbers)."""
    pytest.importorskip("gym_pusht")
    from dp.data import SequenceDataset

    out = tmp_path / "pusht.zarr"
    collect(_cfg(tmp_path, task={"name": "pusht", "env": "pusht", "env_options": {}}, n_episodes=1, output=str(out)))
    buf = ReplayBuffer.open(out)
    assert buf["keypoint"].shape == (buf.n_steps, 16) and buf["keypoint"].dtype == np.float32
    from omegaconf import OmegaConf

    from dp.errors import ConfigError
    from dp.train.trainer import obs_keys_for

    task = OmegaConf.load(REPO / "dp/configs/task/pusht.yaml")  # the task config says state_keys [agent_pos, keypoint]
    assert obs_keys_for(task) == {"state": ["agent_pos", "keypoint"]}
    assert obs_keys_for({**task, "obs": "image"}) == {"agent_pos": "agent_pos", "image": "img"}
    assert obs_keys_for({**task, "state_keys": None}) == {"state": "state"}
    with pytest.raises(ConfigError, match="task.state_keys lists the store keys"):
        obs_keys_for({**task, "state_keys": [1, 2]})
    ds = SequenceDataset(buf, horizon=16, n_obs_steps=2, n_action_steps=8, obs_keys=obs_keys_for(task))
    state = ds[0]["obs"]["state"]
    assert state.shape == (2, 18)
    np.testing.assert_array_equal(state[:, 2:], buf["keypoint"][:2])


def test_expert_options_the_expert_does_not_take_stop_before_anything_is_written(tmp_path):
    task = {"name": "toy", "env": "toy", "env_options": {}, "expert_options": {"plan": "two_switches"}}
    with pytest.raises(TypeError, match="toy's scripted expert takes no options; got \\['plan'\\]"):
        collect(_cfg(tmp_path, task=task))
    assert not (tmp_path / "toy.zarr").exists()


def _executed_minus_stored(buf) -> np.ndarray:
    """Per step of every episode: the action the toy env executed (from its motion) minus the stored one."""
    from dp.envs.toy import MAX_SPEED

    out = []
    for i in range(buf.n_episodes):
        ep = buf.get_episode(i)
        moved = np.diff(ep["state"][:, :2], axis=0) / MAX_SPEED
        out.append(moved - np.clip(ep["action"][:-1], -1, 1))
    return np.concatenate(out)


def test_action_noise_executes_noisy_actions_and_stores_the_experts_labels(tmp_path):
    """DART demonstrations: the env moves by the expert's action plus noise, the store keeps the expert's action,
    and the same seeds give the same store."""
    clean = collect(_cfg(tmp_path, output=str(tmp_path / "clean.zarr")))
    task = {"name": "toy", "env": "toy", "env_options": {}, "expert_options": {"action_noise": 0.3}}
    noisy = collect(_cfg(tmp_path, task=task, output=str(tmp_path / "noisy.zarr"), keep_failed=True))
    assert noisy["expert_options"] == {"action_noise": 0.3}
    gap_clean = _executed_minus_stored(ReplayBuffer.open(tmp_path / "clean.zarr"))
    gap_noisy = _executed_minus_stored(ReplayBuffer.open(tmp_path / "noisy.zarr"))
    assert np.abs(gap_clean).max() < 1e-5
    assert 0.2 < gap_noisy.std() < 0.35  # the noise (std 0.3, clipped to the action space), not stored
    again = collect(_cfg(tmp_path, task=task, output=str(tmp_path / "again.zarr"), keep_failed=True))
    assert again["episode_seeds"] == noisy["episode_seeds"]
    np.testing.assert_array_equal(ReplayBuffer.open(tmp_path / "again.zarr")["state"][:],
                                  ReplayBuffer.open(tmp_path / "noisy.zarr")["state"][:])
    assert clean["episodes"] == 6


@pytest.mark.parametrize("bad", [-0.1, "loud", float("nan")])
def test_a_bad_action_noise_says_what_it_expects_before_anything_is_written(tmp_path, bad):
    task = {"name": "toy", "env": "toy", "env_options": {}, "expert_options": {"action_noise": bad}}
    with pytest.raises(ValueError, match="action_noise: expected a number >= 0"):
        collect(_cfg(tmp_path, task=task))
    assert not (tmp_path / "toy.zarr").exists()
