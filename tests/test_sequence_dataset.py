import numpy as np
import pytest

from data_helpers import random_episodes, write_pusht_style_v2
from dp.data import DatasetError, ReplayBuffer, SequenceDataset, episode_split, window_index


def reference_windows(episode_ends, horizon, pad_before, pad_after):
    """diffusion_policy's create_indices + sample_sequence, written as its per-sample loop."""
    out = []
    start = 0
    for end in episode_ends:
        L = end - start
        for idx in range(-pad_before, L - horizon + pad_after + 1):
            buf_s, buf_e = max(idx, 0) + start, min(idx + horizon, L) + start
            s_off = buf_s - (idx + start)
            e_off = (idx + horizon + start) - buf_e
            out.append((buf_s, buf_e, s_off, horizon - e_off))
        start = end
    return out


def reference_sample(x, w, horizon):
    buf_s, buf_e, s, e = w
    seg = x[buf_s:buf_e]
    data = np.zeros((horizon, *x.shape[1:]), dtype=x.dtype)
    data[:s] = seg[0]
    data[e:] = seg[-1]
    data[s:e] = seg
    return data


@pytest.mark.parametrize("horizon,To,Ta", [(16, 2, 8), (4, 1, 1), (10, 3, 5)])
def test_windows_match_diffusion_policy_values(tmp_path, horizon, To, Ta):
    arrays, ends = write_pusht_style_v2(tmp_path / "p.zarr", lengths=(7, 3, 12, 20))
    ds = SequenceDataset(
        tmp_path / "p.zarr", horizon=horizon, n_obs_steps=To, n_action_steps=Ta, obs_keys={"state": "state", "image": "img"}
    )
    ref = reference_windows(ends, horizon, To - 1, Ta - 1)
    assert len(ds) == len(ref)
    for i, w in enumerate(ref):
        item = ds[i]
        np.testing.assert_array_equal(item["action"], reference_sample(arrays["action"], w, horizon))
        np.testing.assert_array_equal(item["obs"]["state"], reference_sample(arrays["state"], w, horizon)[:To])
        img = reference_sample(arrays["img"], w, horizon)[:To]
        np.testing.assert_array_equal(item["obs"]["image"], np.moveaxis(img, -1, -3))
        assert item["obs"]["image"].shape == (To, 3, 96, 96) and item["obs"]["image"].dtype == np.uint8


def test_padding_repeats_edge_frames():
    buf = ReplayBuffer.empty()
    buf.add_episode({"action": np.arange(5, dtype=np.float32)[:, None], "state": np.arange(5, dtype=np.float32)[:, None]})
    ds = SequenceDataset(buf, horizon=4, n_obs_steps=2, n_action_steps=3)
    first, last = ds[0], ds[len(ds) - 1]
    assert first["action"][:, 0].tolist() == [0, 0, 1, 2]  # one step of start padding (To-1)
    assert first["obs"]["state"][:, 0].tolist() == [0, 0]
    assert last["action"][:, 0].tolist() == [3, 4, 4, 4]  # Ta-1 = 2 steps of end padding
    batch = ds.get_batch(np.arange(len(ds)))
    assert batch["action"].shape == (len(ds), 4, 1)


def test_window_index_is_vectorised_equivalent():
    ends = np.array([5, 6, 30, 31, 50])
    mask = np.array([True, True, False, True, True])
    start, es, ee = window_index(ends, mask, horizon=6, pad_before=2, pad_after=3)
    expect = []
    s = 0
    for e, m in zip(ends, mask):
        if m:
            expect += [(s + i) for i in range(-2, (e - s) - 6 + 3 + 1)]
        s = e
    assert start.tolist() == expect
    unmasked, _, _ = window_index(ends, np.ones(5, bool), horizon=6, pad_before=2, pad_after=3)
    assert len(unmasked) == len(reference_windows(ends, 6, 2, 3))
    assert (ee - es >= 1).all() and (start >= es - 2).all()


def test_split_is_by_episode_seeded_and_disjoint():
    train, val = episode_split(20, 0.2, seed=3)
    assert val.sum() == 4 and not (train & val).any() and (train | val).all()
    t2, v2 = episode_split(20, 0.2, seed=3)
    assert (v2 == val).all()
    t3, _ = episode_split(20, 0.2, seed=3, max_train_episodes=5)
    assert t3.sum() == 5 and not (t3 & val).any()

    buf = ReplayBuffer.empty()
    for ep in random_episodes([10] * 10):
        buf.add_episode(ep)
    ds = SequenceDataset(buf, horizon=4, n_obs_steps=2, n_action_steps=2, val_ratio=0.3, seed=1)
    val_ds = ds.get_validation_dataset()
    assert len(ds) + len(val_ds) == len(SequenceDataset(buf, horizon=4, n_obs_steps=2, n_action_steps=2))
    train_eps = set(np.searchsorted(buf.episode_ends, ds.ep_start, side="right"))
    val_eps = set(np.searchsorted(buf.episode_ends, val_ds.ep_start, side="right"))
    assert train_eps.isdisjoint(val_eps) and len(val_eps) == 3


def test_bad_arguments_and_missing_keys(tmp_path):
    buf = ReplayBuffer.empty()
    buf.add_episode(random_episodes([6])[0])
    with pytest.raises(DatasetError, match="n_action_steps"):
        SequenceDataset(buf, horizon=4, n_obs_steps=2, n_action_steps=4)
    with pytest.raises(DatasetError, match=r"lacks data/\['img'\].*obs=image"):
        SequenceDataset(buf, obs_keys={"state": "state", "image": "img"})
    with pytest.raises(DatasetError, match="val_ratio"):
        SequenceDataset(buf, val_ratio=1.5)


def test_normalizer_fit_on_training_split():
    buf = ReplayBuffer.empty()
    for ep in random_episodes([12, 9]):
        buf.add_episode(ep)
    ds = SequenceDataset(buf, horizon=4, n_obs_steps=2, n_action_steps=2)
    norm = ds.fit_normalizer()
    z = norm.normalize("action", buf["action"])
    assert np.allclose(z.min(0), -1, atol=1e-5) and np.allclose(z.max(0), 1, atol=1e-5)
    assert set(norm.keys()) == {"action", "state"}


def test_items_batches_and_dataloader_agree():
    import torch

    from dp.data import collate_batch

    buf = ReplayBuffer.empty()
    for k, ep in enumerate(random_episodes([9, 4, 15], image_hw=(8, 8))):
        ep["task_id"] = np.full(len(ep["action"]), k, dtype=np.int64)
        buf.add_episode(ep)
    ds = SequenceDataset(buf, horizon=6, n_obs_steps=3, n_action_steps=2, obs_keys={"state": "state", "image": "img"})
    idx = np.arange(len(ds))
    batch = ds.get_batch(idx)
    for i in idx:
        item = ds[int(i)]
        np.testing.assert_array_equal(item["action"], batch["action"][i])
        np.testing.assert_array_equal(item["obs"]["image"], batch["obs"]["image"][i])
        assert item["task_id"] == batch["task_id"][i]
    assert sorted(set(batch["task_id"].tolist())) == [0, 1, 2]
    loader = torch.utils.data.DataLoader(ds, batch_size=5, shuffle=False, collate_fn=collate_batch)
    first = next(iter(loader))
    assert first["obs"]["image"].shape == (5, 3, 3, 8, 8) and first["obs"]["image"].dtype == torch.uint8
    np.testing.assert_array_equal(first["action"].numpy(), batch["action"][:5])


def test_bench_reference_sampler_matches_dataset():
    from dp.bench.dataset import PerSampleSampler, _buffer

    buf = _buffer(3, 20, image=True)
    keys = {"state": "state", "image": "img"}
    ds = SequenceDataset(buf, horizon=16, n_obs_steps=2, n_action_steps=8, obs_keys=keys)
    ref = PerSampleSampler(buf, keys)
    for i in range(len(ds)):
        r, d = ref.sample(i), ds[i]
        np.testing.assert_array_equal(r["action"], d["action"])
        np.testing.assert_array_equal(np.moveaxis(r["image"], -1, -3), d["obs"]["image"])
