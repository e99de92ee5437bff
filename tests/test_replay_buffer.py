import numpy as np
import pytest
import zarr

from data_helpers import random_episodes, write_pusht_style_v2
from dp.data import DatasetError, ReplayBuffer


def test_append_read_roundtrip_format3(tmp_path):
    eps = random_episodes([5, 8, 3], image_hw=(16, 16))
    buf = ReplayBuffer.create(tmp_path / "d.zarr")
    for ep in eps:
        buf.add_episode(ep)
    assert buf.n_episodes == 3 and buf.n_steps == 16
    # plain zarr sees diffusion_policy's layout, written as format 3 with zstd
    root = zarr.open_group(str(tmp_path / "d.zarr"), mode="r")
    assert root.metadata.zarr_format == 3
    assert root["meta/episode_ends"][:].tolist() == [5, 13, 16]
    assert root["meta/episode_ends"].dtype == np.int64
    assert root["data/img"].chunks == (1, 16, 16, 3)
    assert "zstd" in str(root["data/state"].compressors)
    reopened = ReplayBuffer.open(tmp_path / "d.zarr")
    for i, ep in enumerate(eps):
        got = reopened.get_episode(i)
        for k in ep:
            np.testing.assert_array_equal(got[k], ep[k])
    mem = ReplayBuffer.load(tmp_path / "d.zarr", keys=["action"])
    assert mem.backend == "numpy" and mem.keys() == ["action"]
    np.testing.assert_array_equal(mem["action"][5:13], eps[1]["action"])


def test_opens_diffusion_policy_format2_store(tmp_path):
    arrays, ends = write_pusht_style_v2(tmp_path / "pusht.zarr")
    buf = ReplayBuffer.open(tmp_path / "pusht.zarr")
    assert buf.zarr_format == 2
    assert buf.keys() == ["action", "img", "keypoint", "n_contacts", "state"]
    assert buf.episode_ends.tolist() == ends.tolist()
    np.testing.assert_array_equal(buf.get_episode(1)["keypoint"], arrays["keypoint"][7:10])
    # copying to format 3 per array keeps every value
    out = buf.save(tmp_path / "copy.zarr")
    assert out.zarr_format == 3
    np.testing.assert_array_equal(ReplayBuffer.open(tmp_path / "copy.zarr")["img"][:], arrays["img"])


def test_in_memory_buffer_and_episode_checks():
    buf = ReplayBuffer.empty()
    buf.add_episode({"action": np.zeros((4, 2), np.float32)})
    with pytest.raises(DatasetError, match="share a non-zero length"):
        buf.add_episode({"action": np.zeros((0, 2), np.float32)})
    with pytest.raises(DatasetError, match="per-step shape"):
        buf.add_episode({"action": np.zeros((3, 3), np.float32)})
    with pytest.raises(DatasetError, match="differ from the dataset's keys"):
        buf.add_episode({"action": np.zeros((3, 2), np.float32), "state": np.zeros((3, 1), np.float32)})
    with pytest.raises(DatasetError, match="dtype"):
        buf.add_episode({"action": np.zeros((3, 2), np.float64)})
    assert buf.n_episodes == 1 and buf.n_steps == 4


def test_open_errors_name_the_problem(tmp_path):
    with pytest.raises(DatasetError, match="dp-collect"):
        ReplayBuffer.open(tmp_path / "missing.zarr")
    root = zarr.open_group(str(tmp_path / "nometa.zarr"), mode="w")
    root.create_group("data")
    with pytest.raises(DatasetError, match="missing group 'meta/'"):
        ReplayBuffer.open(tmp_path / "nometa.zarr")
    root.create_group("meta")
    with pytest.raises(DatasetError, match="meta/episode_ends"):
        ReplayBuffer.open(tmp_path / "nometa.zarr")
    buf = ReplayBuffer.empty()
    buf.add_episode({"action": np.zeros((2, 1), np.float32)})
    with pytest.raises(DatasetError, match=r"no key\(s\) \['state'\]"):
        buf["state"]
