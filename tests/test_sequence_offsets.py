"""SequenceDataset key_offsets (future frames), pad_mask, and list obs_keys (concat / cameras)."""
import numpy as np
import pytest
import torch

from data_helpers import random_episodes
from dp.data import DatasetError, Normalizer, ReplayBuffer, SequenceDataset, collate_batch

LENGTHS = (10, 3, 17, 6)  # 36 steps: a uint8 image can hold its global step index


def index_buffer(lengths=LENGTHS, hw=(4, 5), task_id=True) -> ReplayBuffer:
    """Every array's value at global step s encodes s, so a sample tells which steps it read."""
    buf = ReplayBuffer.empty()
    start = 0
    for k, L in enumerate(lengths):
        s = np.arange(start, start + L)
        ep = {
            "action": np.stack([s, -s], axis=-1).astype(np.float32),
            "state": np.stack([s, 10 * s, 100 * s], axis=-1).astype(np.float32),
            "agent_pos": np.stack([s, s + 0.5], axis=-1).astype(np.float32),
            "object": np.stack([-s, -s - 0.5, 1000 + s], axis=-1).astype(np.float32),
            "gripper": (s * 2.0).astype(np.float32),  # 1-D store array
            "img": np.broadcast_to(s[:, None, None, None], (L, *hw, 3)).astype(np.uint8).copy(),
            "wrist": np.broadcast_to(200 - s[:, None, None, None], (L, *hw, 3)).astype(np.uint8).copy(),
        }
        if task_id:
            ep["task_id"] = np.full(L, k, dtype=np.int64)
        buf.add_episode(ep)
        start += L
    return buf


def expected_steps(ds, i, offsets):
    """(absolute steps after clamping, real-data mask) of window i at current step + offsets."""
    t = int(ds.start[i]) + ds.n_obs_steps - 1
    raw = t + np.asarray(offsets)
    steps = np.clip(raw, ds.ep_start[i], ds.ep_end[i] - 1)
    return steps, steps == raw


def assert_samples_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            assert_samples_equal(a[k], b[k])
        else:
            x, y = np.asarray(a[k]), np.asarray(b[k])
            assert x.dtype == y.dtype and x.shape == y.shape, k
            np.testing.assert_array_equal(x, y, err_msg=k)


@pytest.mark.parametrize("horizon,To,Ta", [(4, 2, 3), (6, 1, 1), (8, 3, 4)])
def test_default_offsets_give_todays_samples(horizon, To, Ta):
    buf = index_buffer()
    keys = {"state": "state", "image": "img"}
    base = SequenceDataset(buf, horizon=horizon, n_obs_steps=To, n_action_steps=Ta, obs_keys=keys)
    explicit = SequenceDataset(
        buf, horizon=horizon, n_obs_steps=To, n_action_steps=Ta, obs_keys=keys,
        key_offsets={"state": range(-(To - 1), 1), "image": list(range(-(To - 1), 1)),
                     "action": range(-(To - 1), horizon - (To - 1))},
    )
    absent = SequenceDataset(buf, horizon=horizon, n_obs_steps=To, n_action_steps=Ta, obs_keys=keys, key_offsets={})
    assert len(base) == len(explicit) == len(absent)
    assert explicit.key_offsets == base.key_offsets
    for i in range(len(base)):
        item = base[i]
        assert_samples_equal(item, explicit[i])
        assert_samples_equal(item, absent[i])
        # today's window: steps start .. start+H-1 clipped into the episode, obs its first To
        s = int(base.start[i])
        window = np.clip(np.arange(s, s + horizon), base.ep_start[i], base.ep_end[i] - 1)
        assert item["action"][:, 0].tolist() == window.tolist()
        assert item["obs"]["state"][:, 0].tolist() == window[:To].tolist()
        assert item["obs"]["image"].shape == (To, 3, 4, 5) and item["obs"]["image"].dtype == np.uint8
        assert item["obs"]["image"][:, 0, 0, 0].tolist() == window[:To].tolist()
        real = (np.arange(s, s + horizon) >= base.ep_start[i]) & (np.arange(s, s + horizon) < base.ep_end[i])
        assert item["pad_mask"]["action"].tolist() == real.tolist()
        assert item["pad_mask"]["state"].tolist() == real[:To].tolist()
        assert item["pad_mask"]["image"].dtype == np.bool_
    batch = base.get_batch(np.arange(len(base)))
    assert_samples_equal(batch, explicit.get_batch(np.arange(len(base))))
    # names with the same offsets get their own mask arrays (writing one leaves the other)
    batch["pad_mask"]["state"][:] = False
    assert batch["pad_mask"]["image"].any()


def test_future_frame_offsets_read_the_right_steps_and_clamp_at_edges():
    buf = index_buffer()
    offsets = [-1, 0, 4, 8]
    ds = SequenceDataset(buf, horizon=4, n_obs_steps=2, n_action_steps=3, obs_keys={"state": "state", "image": "img"},
                         key_offsets={"image": offsets, "action": [0, 2, 3]})
    plain = SequenceDataset(buf, horizon=4, n_obs_steps=2, n_action_steps=3, obs_keys={"state": "state", "image": "img"})
    assert len(ds) == len(plain) and (ds.start == plain.start).all()  # offsets do not change the windows

    # episode 0 is steps 0..9; its first window has current step 0, its last current step 9
    first, last = ds[0], ds[9]
    assert first["obs"]["image"][:, 0, 0, 0].tolist() == [0, 0, 4, 8]
    assert first["pad_mask"]["image"].tolist() == [False, True, True, True]
    assert last["obs"]["image"][:, 0, 0, 0].tolist() == [8, 9, 9, 9]
    assert last["pad_mask"]["image"].tolist() == [True, True, False, False]
    assert last["action"][:, 0].tolist() == [9, 9, 9] and last["pad_mask"]["action"].tolist() == [True, False, False]

    clamped_start = clamped_end = 0
    for i in range(len(ds)):
        item = ds[i]
        steps, real = expected_steps(ds, i, offsets)
        assert item["obs"]["image"].shape == (4, 3, 4, 5)
        np.testing.assert_array_equal(item["obs"]["image"], np.broadcast_to(steps[:, None, None, None], (4, 3, 4, 5)))
        assert item["pad_mask"]["image"].tolist() == real.tolist()
        a_steps, a_real = expected_steps(ds, i, [0, 2, 3])
        assert item["action"][:, 0].tolist() == a_steps.tolist() and item["pad_mask"]["action"].tolist() == a_real.tolist()
        # state keeps the default window [t-1, t]
        s_steps, s_real = expected_steps(ds, i, [-1, 0])
        assert item["obs"]["state"][:, 0].tolist() == s_steps.tolist()
        assert item["pad_mask"]["state"].tolist() == s_real.tolist()
        clamped_start += int(not real[0])
        clamped_end += int((~real[2:]).any())
    assert clamped_start > 0 and clamped_end > 0
    # the 3-step episode (steps 10..12) clamps at both ends within one sample
    i = int(np.flatnonzero(ds.ep_start == 10)[0])
    assert ds[i]["obs"]["image"][:, 0, 0, 0].tolist() == [10, 10, 12, 12]
    assert ds[i]["pad_mask"]["image"].tolist() == [False, True, False, False]


def test_get_batch_equals_stacked_items():
    buf = index_buffer()
    ds = SequenceDataset(
        buf, horizon=6, n_obs_steps=2, n_action_steps=3,
        obs_keys={"state": ["agent_pos", "object", "gripper"], "image": ["img", "wrist"], "raw": "state"},
        key_offsets={"image": [-1, 0, 4, 8], "raw": [-3, 0, 2], "action": range(-1, 7)},
    )
    idx = np.random.default_rng(0).integers(0, len(ds), size=40)
    idx[:2] = [0, len(ds) - 1]
    batch = ds.get_batch(idx)
    items = [ds[int(i)] for i in idx]
    stacked = {
        "obs": {k: np.stack([it["obs"][k] for it in items]) for k in items[0]["obs"]},
        "action": np.stack([it["action"] for it in items]),
        "pad_mask": {k: np.stack([it["pad_mask"][k] for it in items]) for k in items[0]["pad_mask"]},
        "task_id": np.stack([it["task_id"] for it in items]),
    }
    assert_samples_equal(batch, stacked)
    assert batch["pad_mask"].keys() == {"state", "image", "raw", "action"}
    assert batch["pad_mask"]["image"].shape == (40, 4) and batch["pad_mask"]["action"].shape == (40, 8)
    assert not batch["pad_mask"]["image"].all() and batch["pad_mask"]["image"].any()

    torch_batch = collate_batch(batch)
    assert torch_batch["pad_mask"]["image"].dtype == torch.bool and torch_batch["pad_mask"]["image"].shape == (40, 4)
    from_items = collate_batch(items)  # the per-item path stacks to the same tensors
    for k in ("state", "image", "raw"):
        assert torch.equal(from_items["obs"][k], torch_batch["obs"][k])
        assert torch.equal(from_items["pad_mask"][k], torch_batch["pad_mask"][k])
    loader = torch.utils.data.DataLoader(ds, batch_size=5, shuffle=False, collate_fn=collate_batch)
    first = next(iter(loader))
    assert first["pad_mask"]["image"].dtype == torch.bool and first["pad_mask"]["image"].shape == (5, 4)
    assert first["obs"]["image"].shape == (5, 4, 2, 3, 4, 5)


def test_list_obs_keys_concatenate_low_dim_and_stack_cameras():
    buf = index_buffer()
    ds = SequenceDataset(buf, horizon=4, n_obs_steps=2, n_action_steps=2,
                         obs_keys={"state": ["agent_pos", "object", "gripper"], "image": ["img", "wrist"]})
    single = SequenceDataset(buf, horizon=4, n_obs_steps=2, n_action_steps=2,
                             obs_keys={"agent_pos": "agent_pos", "object": "object", "gripper": "gripper",
                                       "img": "img", "wrist": "wrist"})
    assert len(ds) == len(single)
    for i in range(len(ds)):
        a, b = ds[i], single[i]
        assert a["obs"]["state"].shape == (2, 6) and a["obs"]["state"].dtype == np.float32
        expect = np.concatenate([b["obs"]["agent_pos"], b["obs"]["object"], b["obs"]["gripper"][:, None]], axis=-1)
        np.testing.assert_array_equal(a["obs"]["state"], expect)
        assert a["obs"]["image"].shape == (2, 2, 3, 4, 5) and a["obs"]["image"].dtype == np.uint8
        np.testing.assert_array_equal(a["obs"]["image"][:, 0], b["obs"]["img"])
        np.testing.assert_array_equal(a["obs"]["image"][:, 1], b["obs"]["wrist"])
        assert a["pad_mask"]["image"].shape == (2,)
    assert ds.sample_shapes()["obs"] == {"state": [6], "image": [2, 3, 4, 5]}
    assert single.sample_shapes()["obs"]["img"] == [3, 4, 5]

    norm = ds.fit_normalizer()
    assert set(norm.keys()) == {"action", "state"}
    full = np.concatenate([buf["agent_pos"], buf["object"], buf["gripper"][:, None]], axis=-1)
    ref = Normalizer.fit({"state": full})
    np.testing.assert_allclose(norm.normalize("state", full), ref.normalize("state", full), rtol=1e-6, atol=1e-6)
    z = norm.normalize("state", full)
    assert np.allclose(z.min(0), -1, atol=1e-5) and np.allclose(z.max(0), 1, atol=1e-5)


def test_camera_and_concat_shape_mismatches_are_reported():
    buf = index_buffer()
    buf.data["small"] = np.zeros((buf.n_steps, 2, 2, 3), dtype=np.uint8)
    with pytest.raises(DatasetError, match=r"cameras \['img', 'small'\].*'img': \(4, 5, 3\).*'small': \(2, 2, 3\)"):
        SequenceDataset(buf, horizon=4, n_obs_steps=2, n_action_steps=2, obs_keys={"image": ["img", "small"]})
    with pytest.raises(DatasetError, match="mixes images and low-dim"):
        SequenceDataset(buf, horizon=4, n_obs_steps=2, n_action_steps=2, obs_keys={"x": ["img", "state"]})
    buf.data["grid"] = np.zeros((buf.n_steps, 3, 2), dtype=np.float32)
    with pytest.raises(DatasetError, match=r"concatenates \['state', 'grid'\]"):
        SequenceDataset(buf, horizon=4, n_obs_steps=2, n_action_steps=2, obs_keys={"x": ["state", "grid"]})
    with pytest.raises(DatasetError, match=r"lacks data/\['nope'\]"):
        SequenceDataset(buf, horizon=4, n_obs_steps=2, n_action_steps=2, obs_keys={"x": ["state", "nope"]})
    with pytest.raises(DatasetError, match="non-empty list of store keys"):
        SequenceDataset(buf, horizon=4, n_obs_steps=2, n_action_steps=2, obs_keys={"x": []})


@pytest.mark.parametrize(
    "key_offsets,match",
    [
        ({"state": [0, 0]}, r"strictly increasing.*\[0, 0\]"),
        ({"state": [1, 0]}, "strictly increasing"),
        ({"action": [0, 0.5, 1]}, r"integers, found \[0.5\]"),
        ({"state": [True, 2]}, "integers"),
        ({"state": "01"}, "sequence of integers"),
        ({"state": 3}, "sequence of integers"),
        ({"state": []}, "empty"),
        ({"img": [0]}, r"not in this dataset's batch.*'action' or an obs name.*\['state'\]"),
        ([0, 1], "must map batch names"),
    ],
)
def test_bad_offsets_raise_dataset_error(key_offsets, match):
    buf = ReplayBuffer.empty()
    for ep in random_episodes([8, 5]):
        buf.add_episode(ep)
    with pytest.raises(DatasetError, match=match):
        SequenceDataset(buf, horizon=4, n_obs_steps=2, n_action_steps=2, key_offsets=key_offsets)


def test_numpy_integer_offsets_are_accepted():
    buf = index_buffer()
    ds = SequenceDataset(buf, horizon=4, n_obs_steps=2, n_action_steps=2, key_offsets={"state": np.array([-2, 0, 3])})
    assert ds.key_offsets["state"] == (-2, 0, 3)
    steps, _ = expected_steps(ds, 5, [-2, 0, 3])
    assert ds[5]["obs"]["state"][:, 0].tolist() == steps.tolist()
