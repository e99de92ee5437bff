"""Two cameras end to end on real parts: robosuite renders the agent view and the wrist camera,
dp-collect stores both, ``task.obs_keys`` stacks them as views, a tiny DiT trains on them and
acts from the env's own observations through ``select_action``."""
import numpy as np
import torch

from dp.collect import collect
from dp.data import ReplayBuffer
from dp.train.trainer import Trainer
from train_helpers import train_cfg

WRIST = "robot0_eye_in_hand"


def test_two_camera_policy_trains_and_acts_on_rs_lift(tmp_path):
    from dp import envs

    store = tmp_path / "rs_lift_2cam.zarr"
    collect({"task": {"name": "rs_lift", "env": "rs_lift", "env_options": {"extra_cameras": [WRIST],
                                                                           "max_episode_steps": 40}},
             "n_episodes": 2, "obs": "image", "image_size": 32, "output": str(store), "seed": 0,
             "keep_failed": True, "max_attempts_factor": 1, "overwrite": False, "progress": False})
    buffer = ReplayBuffer.open(store)
    assert buffer["img"].shape[1:] == (32, 32, 3) and buffer[f"{WRIST}_image"].shape[1:] == (32, 32, 3)
    assert not np.array_equal(buffer["img"][5], buffer[f"{WRIST}_image"][5])  # two different views
    cfg = train_cfg(store, tmp_path / "run", "task=rs_lift", f"task.dataset_path={store}", "task.obs=image",
                    f"task.obs_keys={{agent_pos: agent_pos, image: [img, {WRIST}_image]}}",
                    "policy.dim=32", "policy.depth=1", "policy.heads=2", "policy.horizon=8",
                    "policy.n_action_steps=4", "policy.image_encoder.crop=28", "policy.image_encoder.width=8",
                    "policy.image_encoder.stages=2", "training.steps=4", "training.batch_size=4")
    trainer = Trainer(cfg)
    assert trainer.shape_meta["obs"]["image"] == [2, 3, 32, 32]
    assert {"image_v0", "image_v1"} <= set(trainer.policy.obs_encoder.encoders)  # one encoder per camera
    trainer.run()
    policy = trainer.ema.model.eval()
    env = envs.make("rs_lift", obs="image", image_size=32, extra_cameras=[WRIST])
    obs, _ = env.reset(seed=10**9)
    step = {k: v[None] for k, v in obs.items()}
    action = policy.select_action(step)
    assert action.shape == (1, env.action_space.shape[0]) and torch.isfinite(action).all()
    batch = policy._history.batch()
    assert batch["image"].shape == (1, 2, 2, 3, 32, 32)
    torch.testing.assert_close(batch["image"][0, 0, 1], torch.from_numpy(obs[f"{WRIST}_image"]).permute(2, 0, 1))
    env.close()
