"""Image stores read lazily with a bounded cache give the batches the in-memory path gives."""
import numpy as np
import pytest

from data_helpers import random_episodes, write_pusht_style_v2
from dp.data import DatasetError, ReplayBuffer, SequenceDataset

KW = {"horizon": 8, "n_obs_steps": 2, "n_action_steps": 4, "obs_keys": {"state": "state", "image": "img"}}


def _image_store(path, lengths=(30, 20, 25, 40)):
    buf = ReplayBuffer.create(path)
    for ep in random_episodes(lengths, image_hw=(16, 16)):
        buf.add_episode(ep)
    return path


def test_lazy_frames_give_the_in_memory_batches_within_their_cache(tmp_path):
    store = _image_store(tmp_path / "s.zarr")
    eager = SequenceDataset(store, **KW)
    lazy = SequenceDataset(store, **KW, image_cache_mb=16 * 16 * 3 * 10 / 2**20)  # ten frames' worth
    assert eager.lazy_keys == [] and lazy.lazy_keys == ["img"]
    frames = lazy.buffer.data["img"]
    rng = np.random.default_rng(0)
    for idx in (np.arange(len(eager)), rng.integers(0, len(eager), 64), rng.integers(0, len(eager), 64)):
        a, b = eager.get_batch(idx), lazy.get_batch(idx)
        np.testing.assert_array_equal(a["obs"]["image"], b["obs"]["image"])
        np.testing.assert_array_equal(a["obs"]["state"], b["obs"]["state"])
        assert frames._held <= frames.cache_bytes  # one frame per chunk: the bound holds exactly
    np.testing.assert_array_equal(eager[5]["obs"]["image"], lazy[5]["obs"]["image"])  # the per-item path
    misses = frames.misses
    lazy.get_batch(np.array([3]))
    lazy.get_batch(np.array([3]))  # its two frames are cached now
    assert frames.misses <= misses + 2 and frames.hits >= 2
    assert np.asarray(frames).shape == frames.shape  # the whole array on request, e.g. for an export


def test_float_frames_read_lazily_as_uint8(tmp_path):
    arrays, _ = write_pusht_style_v2(tmp_path / "p.zarr", lengths=(9, 7))
    lazy = SequenceDataset(tmp_path / "p.zarr", **KW, image_cache_mb=1)
    image = lazy.get_batch(np.arange(len(lazy)))["obs"]["image"]
    assert image.dtype == np.uint8
    eager = SequenceDataset(tmp_path / "p.zarr", **KW)
    np.testing.assert_array_equal(image, eager.get_batch(np.arange(len(eager)))["obs"]["image"])


def test_auto_keeps_small_stores_in_memory_and_bad_values_are_refused(tmp_path):
    store = _image_store(tmp_path / "s.zarr")
    assert SequenceDataset(store, **KW, image_cache_mb="auto").lazy_keys == []
    for bad in (0, -5, "lots", True):
        with pytest.raises(DatasetError, match="image_cache_mb must be null, 'auto' or a number of MB > 0"):
            SequenceDataset(store, **KW, image_cache_mb=bad)
