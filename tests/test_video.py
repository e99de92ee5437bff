"""Future-frame prediction: patch codec, clip attention patterns, training and evaluation on a real store."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from dp.constants import CONFIG_DIR
from dp.core.attention import (
    FrameLayout, SparseHeadAttention, SparseState, factorized_kernels, spatial_attention, temporal_attention,
)
from dp.core.codecs import FramePatchCodec
from dp.data import SequenceDataset
from dp.errors import ConfigError
from dp.train.trainer import Trainer
from dp.video import VideoPredictor
from dp.video.metrics import psnr, ssim

TINY = ["policy=video", "policy.dim=32", "policy.depth=2", "policy.heads=2", "policy.patch=12",
        "policy.key_offsets={image: [-1, 0, 2, 4]}", "policy.sampler.steps=3"]


@pytest.fixture
def image_store(image_stores):
    return image_stores["push"]


def video_cfg(store, out, *overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose("train", overrides=[
            "task=mw_push", "task.obs=image", f"task.dataset_path={store}", f"output_dir={out}",
            "logging.mode=disabled", "progress=false", "training.batch_size=4", "training.warmup_steps=1",
            "training.val_every=0", "training.val_ratio=0.34", *TINY, *overrides])


def test_spatial_and_temporal_kernels_equal_masked_dense_attention():
    layout = FrameLayout(frames=4, patches=6)
    q, k, v = (torch.randn(2, 3, 24, 8) for _ in range(3))
    for pattern, kernel in (("spatial", spatial_attention), ("temporal", temporal_attention)):
        dense = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.mask(pattern))
        torch.testing.assert_close(kernel(q, k, v, layout), dense)
    # the two patterns differ, and neither is full attention
    assert not torch.allclose(spatial_attention(q, k, v, layout), temporal_attention(q, k, v, layout))
    assert [kn.pattern for kn in factorized_kernels(layout, 4)] == ["temporal", "spatial", "temporal", "spatial"]


def _patterned_heads(layout: FrameLayout, scale: float = 14.0):
    """q, k, v [1, 2, N, T+P]: head 0 attends within its frame, head 1 along its patch position."""
    idx = torch.arange(layout.n)
    frame = F.one_hot(idx // layout.patches, layout.frames).float()
    pos = F.one_hot(idx % layout.patches, layout.patches).float()
    k = torch.cat([frame, pos], 1)
    q0 = torch.cat([frame, torch.zeros_like(pos)], 1) * scale
    q1 = torch.cat([torch.zeros_like(frame), pos], 1) * scale
    q = torch.stack([q0, q1])[None] * (k.shape[1] ** 0.5)
    v = torch.randn(1, 2, layout.n, k.shape[1])
    return q, torch.stack([k, k])[None], v


def test_profiling_gives_each_head_the_pattern_it_has():
    layout = FrameLayout(frames=4, patches=9)
    q, k, v = _patterned_heads(layout)
    state = SparseState(dense_calls=0, sample_rows=8)
    kernel = SparseHeadAttention(layout, state)
    out = kernel(q, k, v)
    assert kernel.last_choice.tolist() == [False, True]  # head 0 spatial, head 1 temporal
    assert state.counts == {"dense": 0, "spatial": 1, "temporal": 1}
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=1e-3, rtol=0)
    # swapped heads swap the choice
    out = kernel(q.flip(1), k, v.flip(1))
    assert kernel.last_choice.tolist() == [True, False]
    # the first calls of a prediction run dense
    state.call, state.dense_calls = 0, 1
    torch.testing.assert_close(kernel(q, k, v), F.scaled_dot_product_attention(q, k, v))
    # a head no pattern approximates within the tolerance runs dense: an unstructured head 1 here
    state.call, state.dense_calls, state.tolerance = 1, 1, 0.05
    state.reset_stats()
    mixed_q = torch.stack([q[0, 0], torch.randn_like(q[0, 1])])[None]
    out = kernel(mixed_q, k, v)
    assert state.counts == {"dense": 1, "spatial": 1, "temporal": 0}
    torch.testing.assert_close(out[:, 1], F.scaled_dot_product_attention(mixed_q, k, v)[:, 1])


def test_patch_codec_round_trip_levels_and_size_errors():
    codec = FramePatchCodec(frames=3, channels=3, height=24, width=36, dim=16, patch=12)
    x = torch.randn(2, 3, 3, 24, 36)
    assert codec.patchify(x).shape == (2, 3, 6, 432)
    torch.testing.assert_close(codec.unpatchify(codec.patchify(x)), x)
    # a patch is a contiguous 12 x 12 square of one frame
    torch.testing.assert_close(codec.patchify(x)[0, 1, 4].reshape(3, 12, 12), x[0, 1, :, 12:24, 12:24])
    assert codec.encode(x).shape == (2, 18, 16)
    assert codec.decode(codec.encode(x)).shape == x.shape
    assert codec.token_levels(torch.tensor([[0.0, 0.5, 1.0]])).tolist() == [[0.0] * 6 + [0.5] * 6 + [1.0] * 6]
    with pytest.raises(ConfigError, match="84x84 is not divisible by the patch size 16"):
        FramePatchCodec(frames=2, channels=3, height=84, width=84, dim=16, patch=16)


def test_future_offsets_past_the_episode_end_are_padded_and_masked(image_store):
    ds = SequenceDataset(image_store, horizon=1, n_obs_steps=1, n_action_steps=1,
                         obs_keys={"image": "img"}, key_offsets={"image": [-1, 0, 30, 1000]})
    last = len(ds) - 1  # the last step of the last episode
    sample = ds[last]
    assert sample["pad_mask"]["image"].tolist() == [True, True, False, False]
    np.testing.assert_array_equal(sample["obs"]["image"][3], sample["obs"]["image"][1])  # the edge frame
    assert not ds.inside_episode("image")[last]
    batch = ds.get_batch(np.arange(len(ds)))
    assert batch["pad_mask"]["image"].shape == (len(ds), 4)


def test_padded_future_frames_are_left_out_of_the_loss():
    model = VideoPredictor({"obs": {"image": [3, 24, 24]}}, {"image": [0, 1, 2]}, patch=12, dim=32, depth=1, heads=2)
    clip = torch.randint(0, 256, (2, 3, 3, 24, 24), dtype=torch.uint8)
    mask = torch.tensor([[True, True, False], [True, True, False]])
    losses = []
    for last in (clip[:, 2], 255 - clip[:, 2]):  # the padded frame's content changes
        torch.manual_seed(0)
        x = clip.clone()
        x[:, 2] = last
        losses.append(model.compute_loss({"obs": {"image": x}, "pad_mask": {"image": mask}})["loss"])
    torch.testing.assert_close(losses[0], losses[1])
    torch.manual_seed(0)
    unmasked = model.compute_loss({"obs": {"image": x}, "pad_mask": {"image": torch.ones_like(mask)}})["loss"]
    assert not torch.allclose(unmasked, losses[1])


@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver_pp", "ddpm", "euler"])
def test_any_gaussian_sampler_predicts_frames_and_keeps_the_context(sampler):
    model = VideoPredictor({"obs": {"image": [3, 24, 24]}}, {"image": [-1, 0, 1]}, patch=12, dim=32, depth=1,
                           heads=2, sampler={"name": sampler, "steps": 3})
    seen = []
    model.network = lambda x_t, level: (seen.append((x_t[:, :2].clone(), level.clone())), x_t)[1]
    context = torch.randint(0, 256, (2, 2, 3, 24, 24), dtype=torch.uint8)
    out = model.predict_frames(context)
    assert out.shape == (2, 1, 3, 24, 24) and 0 <= out.min() and out.max() <= 1
    for x_ctx, level in seen:  # every network call sees the context clean, at level 0
        torch.testing.assert_close(x_ctx, context.float() / 127.5 - 1)
        assert (level[:, :2] == 0).all() and (level[:, 2] > 0).all()


def test_frame_metrics():
    x = torch.rand(2, 3, 3, 32, 32)
    assert torch.allclose(ssim(x, x), torch.ones(2, 3))
    assert torch.isinf(psnr(x, x)).logical_not().all() and (psnr(x, x) > 90).all()
    noisy = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    noisier = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    assert (ssim(noisy, x) > ssim(noisier, x)).all() and (psnr(noisy, x) > psnr(noisier, x)).all()
    assert abs(float(psnr(torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.1)).mean()) - 20.0) < 1e-4


def test_video_trains_with_the_trainer_and_evaluates_held_out_episodes(image_store, tmp_path):
    from dp.eval.video import evaluate_video

    trainer = Trainer(video_cfg(image_store, tmp_path / "run", "training.steps=2"))
    assert isinstance(trainer.policy, VideoPredictor)
    assert trainer.policy.codec.patches == 4 and trainer.policy.n_context == 2
    trainer.run()
    s = evaluate_video(str(tmp_path / "run"), n_clips=5, n_grid=2, progress=False, attention="sparse")
    assert [r["offset"] for r in s["per_offset"]] == [2, 4]
    assert s["clips"] == 5 and s["attention"] == "sparse"
    report = json.loads((tmp_path / "run" / "video_eval" / "video_eval.json").read_text())
    assert all(np.isfinite(r["psnr"]) and np.isfinite(r["copy_last_psnr"]) for r in report["per_offset"])
    assert (tmp_path / "run" / "video_eval" / "video_grid.mp4").stat().st_size > 0


def test_video_needs_an_image_store_and_a_future_frame(tmp_path, image_store):
    with pytest.raises(ConfigError, match="one camera"):
        VideoPredictor({"obs": {"state": [9]}}, {"image": [0, 1]})
    with pytest.raises(ConfigError, match="one future frame"):
        VideoPredictor({"obs": {"image": [3, 24, 24]}}, {"image": [-2, -1, 0]})
    with pytest.raises(ConfigError, match="not divisible"):
        Trainer(video_cfg(image_store, tmp_path / "run", "policy.patch=7"))


def test_rollout_goes_past_the_trained_clip_and_attention_is_swappable():
    model = VideoPredictor({"obs": {"image": [3, 24, 24]}}, {"image": [-2, 0, 2, 4]}, patch=12, dim=32, depth=2,
                           heads=2, sampler={"name": "ddim", "steps": 2})
    for m in model.modules():  # adaLN-Zero: a fresh model's blocks are the identity and its head predicts zeros
        if isinstance(m, torch.nn.Linear) and not m.weight.any():
            torch.nn.init.normal_(m.weight, std=0.05)
    context = torch.randint(0, 256, (1, 2, 3, 24, 24), dtype=torch.uint8)
    calls = []
    predict = model.predict_frames
    model.predict_frames = lambda ctx: (calls.append(ctx.clone()), predict(ctx))[1]
    frames = model.rollout(context, 5)  # the clip predicts 2 frames: three clips, each fed the last two
    assert frames.shape == (1, 5, 3, 24, 24) and len(calls) == 3
    torch.testing.assert_close(calls[1], torch.cat([context.float(), frames[:, :2] * 255], 1)[:, -2:])
    outs = {}
    for attention in ("full", "factorized", "sparse"):
        model.set_attention(attention)
        model.generator = torch.Generator().manual_seed(0)
        outs[attention] = predict(context)
    assert not torch.allclose(outs["full"], outs["factorized"])
    assert model.config["attention"] == "sparse"


def test_pattern_errors_measure_how_far_each_pattern_is_from_full_attention():
    from dp.bench.video_sparse import _pattern_masks, pattern_errors, restricted_errors

    layout = FrameLayout(frames=4, patches=9)
    q, k, v = _patterned_heads(layout)  # head 0 attends within its frame, head 1 along its patch position
    errors = restricted_errors(q, k, v, _pattern_masks(layout, n_context=2))
    assert errors["spatial"][0] < 1e-3 < errors["spatial"][1]
    assert errors["temporal"][1] < 1e-3 < errors["temporal"][0]
    assert errors["spatial or temporal"].max() < 1e-3
    # on a model: one row per pattern and the better of SVG's pair, over layers x heads x network calls
    model = VideoPredictor({"obs": {"image": [3, 24, 24]}}, {"image": [-2, 0, 2, 4]}, patch=12, dim=32, depth=2,
                           heads=2, sampler={"name": "ddim", "steps": 2})
    context = torch.randint(0, 256, (2, 2, 3, 24, 24), dtype=torch.uint8)
    rows = {r["pattern"]: r for r in pattern_errors(model, context)}
    assert rows["spatial"]["key_density"] == pytest.approx(1 / model.layout.frames)
    assert rows["temporal"]["key_density"] == pytest.approx(1 / model.layout.patches)
    assert rows["better of spatial, temporal"]["median_rel_error"] <= rows["spatial"]["median_rel_error"]
    assert rows["spatial"]["head_calls"] == 2 * 2 * 2  # layers x heads x network calls
    assert all(b.attn.kernel is None for b in model.dit.blocks)  # the hooks are removed
