"""PAD: joint frame and action denoising, the image-cannot-see-action mask, co-training on video."""
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from dp.constants import CONFIG_DIR
from dp.data import DatasetError, ReplayBuffer, SequenceDataset
from dp.data.cotrain import CoTrainDataset
from dp.encoders.image import random_shift
from dp.errors import ConfigError
from dp.policies.pad import PADPolicy
from dp.train.trainer import Trainer

TINY = ["policy=pad", "policy.dim=32", "policy.depth=2", "policy.heads=2", "policy.horizon=8", "policy.n_action_steps=4",
        "policy.n_obs_steps=2", "policy.key_offsets={image: [-1, 0, 4]}", "policy.sampler.steps=3",
        "policy.language={encoder: builtin, layers: 1}"]


def pad_cfg(store, out, *overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose("train", overrides=[
            "task=mw_push", "task.obs=image", f"task.dataset_path={store}", f"output_dir={out}",
            "logging.mode=disabled", "progress=false", "training.batch_size=6", "training.warmup_steps=1",
            "training.val_every=0", "training.val_ratio=0", *TINY, *overrides])


@pytest.fixture
def trained(image_stores, tmp_path):
    trainer = Trainer(pad_cfg(image_stores["push"], tmp_path / "run", "training.steps=2"))
    trainer.run()
    return trainer


def _obs(policy, b=2):
    return {"agent_pos": torch.randn(b, 2, policy.config["shape_meta"]["obs"]["agent_pos"][0]), "instruction": ["push the puck to the goal"] * b,
            "image": torch.randint(0, 256, (b, 2, 3, 24, 24), dtype=torch.uint8)}


def test_pad_trains_predicts_frames_and_rolls_out(trained, tmp_path):
    from dp.eval.evaluate import evaluate_checkpoint

    policy = trained.policy.eval()
    assert isinstance(policy, PADPolicy)
    out = policy.predict(_obs(policy))
    assert out["action"].shape == (2, 8, 4) and out["frames"].shape == (2, 1, 3, 24, 24)
    assert torch.isfinite(out["action"]).all() and 0 <= out["frames"].min() and out["frames"].max() <= 1
    s = evaluate_checkpoint(str(tmp_path / "run"), n_episodes=1, n_envs=1, n_videos=0, max_steps=5, progress=False)
    assert s["per_task"]["mw_push"]["episode_results"][0]["length"] == 5


def test_history_keeps_the_loss_parts(trained):
    """The trainer's history holds each loss part beside the loss, averaged over the same steps."""
    h = trained.history
    assert len(h["action_loss"]) == len(h["image_loss"]) == len(h["loss"]) == 1
    w = trained.policy.image_loss_weight
    assert h["loss"][0] == pytest.approx(h["action_loss"][0] + w * h["image_loss"][0], rel=1e-5)


def test_frame_tokens_never_attend_to_action_tokens(trained):
    policy = trained.policy.eval()
    obs = policy.normalize_obs(_obs(policy))
    cache = policy.encode_obs(obs)
    x = torch.randn(policy.codec.shape(2))
    level = torch.full(x.shape[:2], 0.5)
    other = x.clone()
    other[:, policy.codec.frame_rows:] = torch.randn_like(other[:, policy.codec.frame_rows:])  # new actions
    frames = policy.codec.frame_rows
    with torch.no_grad():
        a, b = policy.denoiser_tokens(x, level, cache), policy.denoiser_tokens(other, level, cache)
        torch.testing.assert_close(a[:, :frames], b[:, :frames])       # frame tokens: unchanged
        assert not torch.allclose(a[:, frames:], b[:, frames:])        # action tokens see their own change
        mask = policy.token_mask
        policy.token_mask = None                                       # without the mask the frames would see them
        c, d = policy.denoiser_tokens(x, level, cache), policy.denoiser_tokens(other, level, cache)
        policy.token_mask = mask
    assert not torch.allclose(c[:, :frames], d[:, :frames])
    assert mask[:frames, frames:].any().item() is False and mask[frames:].all()


def test_action_loss_skips_video_samples_and_image_loss_skips_padded_frames(trained, image_stores):
    policy = trained.policy.train()
    batch = trained._batch(np.arange(6))
    batch["has_action"] = torch.tensor([True, True, True, False, False, False])
    losses = []
    for actions in (batch["action"], batch["action"] + 5.0 * torch.tensor([0, 0, 0, 1, 1, 1.0])[:, None, None]):
        torch.manual_seed(0)
        losses.append(policy.compute_loss({**batch, "action": actions}))
    torch.testing.assert_close(losses[0]["loss"], losses[1]["loss"])  # video rows' actions are never read
    batch["pad_mask"]["image"][:, -1] = False  # every future frame padded: no image loss left
    torch.manual_seed(0)
    assert float(policy.compute_loss(batch)["image_loss"]) == 0.0


def test_cotraining_mixes_video_at_the_configured_share(image_stores, tmp_path):
    robot = SequenceDataset(image_stores["push"], horizon=8, n_obs_steps=2, n_action_steps=4,
                            obs_keys={"agent_pos": "agent_pos", "image": "img"}, key_offsets={"image": [-1, 0, 4]})
    # an action-free copy of the reach store: video whose actions are absent
    src = ReplayBuffer.open(image_stores["reach"])
    video_path = tmp_path / "reach_video.zarr"
    free = ReplayBuffer.empty()
    for e in range(src.n_episodes):
        free.add_episode({k: v for k, v in src.get_episode(e).items() if k != "action"})
    free.attrs.update(dict(src.attrs))
    free.save(video_path)
    ds = CoTrainDataset(robot, [{"path": str(video_path)}], 0.3, key_offsets=robot.key_offsets)
    assert abs(ds.video_slots / len(ds) - 0.3) < 0.01
    assert ds.attrs["instructions"] == robot.attrs["instructions"] + src.attrs["instructions"]
    batch = ds.get_batch(np.arange(len(ds)))
    video = ~batch["has_action"]
    assert video.sum() == ds.video_slots and not batch["action"][video].any()
    assert (batch["task_id"][video] == 1).all() and (batch["task_id"][~video] == 0).all()
    assert not batch["pad_mask"]["action"][video].any()
    assert batch["obs"]["image"].shape[1:] == (3, 3, 24, 24)
    # every robot window and every video window appears in one pass over the virtual index
    assert len({tuple(r) for r in batch["obs"]["agent_pos"][~video].reshape((~video).sum(), -1)}) >= len(robot) * 0.9
    # and the trainer co-trains from the task config
    trainer = Trainer(pad_cfg(image_stores["push"], tmp_path / "run", "training.steps=2",
                              f"+task.video_datasets=[{{path: {video_path}}}]", "+task.video_fraction=0.3"))
    assert isinstance(trainer.dataset, CoTrainDataset)
    trainer.run()


def test_bad_video_and_pad_configs_get_clear_errors(image_stores, tmp_path):
    robot = SequenceDataset(image_stores["push"], horizon=8, n_obs_steps=2, n_action_steps=4,
                            obs_keys={"agent_pos": "agent_pos", "image": "img"})
    with pytest.raises(DatasetError, match=r"image: robot \[3, 24, 24\], video \[3, 32, 32\].*same image_size"):
        CoTrainDataset(robot, [{"path": str(image_stores["push32"])}], 0.3)
    with pytest.raises(DatasetError, match="video_fraction must be in"):
        CoTrainDataset(robot, [{"path": str(image_stores["reach"])}], 1.5)
    meta = {"action": [4], "obs": {"agent_pos": [9], "image": [3, 24, 24]}}
    with pytest.raises(ConfigError, match="current frame offset"):
        PADPolicy(meta, {"image": [0, 4]}, n_obs_steps=2, patch=12)
    with pytest.raises(ConfigError, match="not divisible"):
        PADPolicy(meta, {"image": [-1, 0, 4]}, n_obs_steps=2, patch=10)
    with pytest.raises(ConfigError, match="policy.shift must be 0"):
        PADPolicy(meta, {"image": [0, 4]}, patch=12, shift=12)


def test_random_shift_moves_every_frame_of_a_sample_together():
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 200, (5, 1, 3, 16, 16), dtype=torch.uint8)
    frames = torch.cat([base, base + 1, base + 2], dim=1)  # [5, 3 frames, 3, 16, 16]
    out = random_shift(frames, 4, generator=g)
    assert out.shape == frames.shape and out.dtype == torch.uint8
    assert torch.equal(out[:, 1], out[:, 0] + 1) and torch.equal(out[:, 2], out[:, 0] + 2)  # one offset per sample
    assert not torch.equal(out, frames)  # 5 samples, 81 offsets each: some moved
    # an interior window of the shifted frame is a window of the original
    for i in range(5):
        hits = [(y, x) for y in range(-4, 5) for x in range(-4, 5)
                if torch.equal(out[i, 0, :, 4:12, 4:12], frames[i, 0, :, 4 + y:12 + y, 4 + x:12 + x])]
        assert hits
    assert random_shift(frames, 0) is frames


def test_pad_trains_with_shifted_frames(image_stores, tmp_path):
    trainer = Trainer(pad_cfg(image_stores["push"], tmp_path / "run", "training.steps=2", "policy.shift=2"))
    assert trainer.policy.shift == 2
    trainer.run()
    assert np.isfinite(trainer.history["loss"]).all()
