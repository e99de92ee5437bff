"""Damaged stores are found, not trained on: missing, altered and truncated chunks, broken
metadata, images without a channel axis, and temp directories of killed writers."""
import json
import os
import subprocess
import sys

import numcodecs
import numpy as np
import pytest
import zarr

from data_helpers import random_episodes, write_pusht_style_v2
from dp.data import DatasetError, ReplayBuffer, SequenceDataset, find_problems, validate
from dp.data.cli import main as dp_data

IMAGE_OBS = {"state": "state", "image": "img"}
DEAD_PID = 2**22 + 12345  # above Linux's largest pid_max (2**22): no process can have it


def _dp_store(path, lengths=(4, 6)):
    """Format 3, as dp writes it: state/action chunked 4 steps long, images one frame per chunk."""
    buf = ReplayBuffer.create(path)
    for ep in random_episodes(lengths, image_hw=(8, 8)):
        buf.add_episode(ep, time_chunk=4)
    return path


def _v2_store(path):
    write_pusht_style_v2(path)  # format 2, one chunk per array
    return path


def _flip_middle(file):
    raw = bytearray(file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    file.write_bytes(bytes(raw))


def _truncate(file):
    raw = file.read_bytes()
    file.write_bytes(raw[: len(raw) // 2])


def _dataset(path):
    return SequenceDataset(path, horizon=2, n_obs_steps=1, n_action_steps=1, obs_keys=IMAGE_OBS)


@pytest.mark.parametrize(
    "fmt, chunk, label",
    [
        ("v3", "data/img/c/3/0/0/0", "chunk (3, 0, 0, 0) (step 3, store key 'c/3/0/0/0')"),
        ("v3", "data/state/c/1/0", "chunk (1, 0) (steps 4-7, store key 'c/1/0')"),
        ("v2", "data/state/0.0", "chunk (0, 0) (steps 0-21, store key '0.0')"),
    ],
)
def test_missing_chunk_is_reported_and_never_read_as_zeros(tmp_path, capsys, fmt, chunk, label):
    path = (_dp_store if fmt == "v3" else _v2_store)(tmp_path / "d.zarr")
    (path / chunk).unlink()
    assert dp_data(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    key = "/".join(chunk.split("/")[:2])
    assert f"{key}: 1 chunk(s) missing from the store: {label}" in err, err
    assert "re-collect it with dp-collect" in err
    with pytest.raises(DatasetError, match="missing from the store"):
        _dataset(path)  # training refuses it
    with pytest.raises(DatasetError, match=f"{key}: 1 chunk"):
        ReplayBuffer.load(path)  # and so does a plain read of the whole store


def test_dp_writes_every_chunk_even_all_zero_ones(tmp_path):
    # zarr 3 skips all-fill-value chunks by default; dp must write them so that a missing
    # chunk always means damage (task_id 0 fills whole chunks in every multi-task store).
    buf = ReplayBuffer.create(tmp_path / "d.zarr")
    buf.add_episode({"action": np.zeros((3, 2), np.float32), "task_id": np.zeros(3, np.int64)})
    assert (tmp_path / "d.zarr/data/task_id/c/0").is_file()
    assert (tmp_path / "d.zarr/data/action/c/0/0").is_file()
    reopened = ReplayBuffer.open(tmp_path / "d.zarr", mode="r+")  # appending later keeps it so
    reopened.add_episode({"action": np.zeros((3, 2), np.float32), "task_id": np.zeros(3, np.int64)})
    assert find_problems(ReplayBuffer.open(tmp_path / "d.zarr")) == []
    # a format-3 store from plain zarr (no checksum) may lack all-zero chunks by design: still valid
    root = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=3)
    root.create_array("data/action", shape=(3, 2), dtype="float32", chunks=(2, 2))[:] = [[1, 1], [1, 1], [0, 0]]
    root.create_array("meta/episode_ends", shape=(1,), dtype="int64")[:] = [3]
    assert not (tmp_path / "plain.zarr/data/action/c/1/0").exists()
    assert find_problems(ReplayBuffer.open(tmp_path / "plain.zarr")) == []
    assert ReplayBuffer.load(tmp_path / "plain.zarr")["action"].tolist() == [[1, 1], [1, 1], [0, 0]]


def test_flipped_byte_fails_the_checksum_where_blosc_would_decode_garbage(tmp_path, capsys):
    path = _dp_store(tmp_path / "d.zarr")
    meta = json.loads((path / "data/img/zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]] == ["bytes", "blosc", "crc32c"]  # checksum over compressed bytes
    chunk = path / "data/img/c/3/0/0/0"
    original = np.asarray(ReplayBuffer.open(path)["img"][3:4])
    _flip_middle(chunk)
    # random pixels do not compress, so Blosc stores them raw: without the checksum the
    # flipped byte decodes silently to a wrong pixel
    garbled = np.frombuffer(numcodecs.Blosc().decode(chunk.read_bytes()[:-4]), np.uint8)
    assert garbled.size == original.size and (garbled != original.ravel()).sum() == 1
    _flip_middle(path / "data/state/c/1/0")

    assert dp_data(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "data/img: unreadable: chunk (3, 0, 0, 0) (step 3, store key 'c/3/0/0/0'): checksum mismatch" in err
    assert "data/state: unreadable: chunk (1, 0) (steps 4-7, store key 'c/1/0'): checksum mismatch" in err
    with pytest.raises(DatasetError, match=r"d\.zarr: data/state: unreadable: chunk \(1, 0\)"):
        _dataset(path)  # reads action, state, img in that order: the first damage stops it


@pytest.mark.parametrize("fmt, chunk", [("v3", "data/state/c/1/0"), ("v2", "data/state/0.0")])
def test_truncated_chunk_is_one_clear_error(tmp_path, fmt, chunk):
    path = (_dp_store if fmt == "v3" else _v2_store)(tmp_path / "d.zarr")
    _truncate(path / chunk)
    reads = (lambda: ReplayBuffer.load(path), lambda: ReplayBuffer.open(path).get_episode(1), lambda: _dataset(path))
    for read in reads:
        with pytest.raises(DatasetError) as e:
            read()
        msg = str(e.value)
        assert "\n" not in msg and str(path) in msg and "data/state: unreadable: chunk" in msg, msg
        assert "Restore the store from a backup or re-collect it with dp-collect." in msg
    problems = find_problems(ReplayBuffer.open(path))
    assert [p.key for p in problems] == ["data/state"]


@pytest.mark.parametrize(
    "fmt, meta",
    [("v3", "zarr.json"), ("v3", "data/state/zarr.json"), ("v3", "meta/zarr.json"),
     ("v2", "data/state/.zarray"), ("v2", "data/.zgroup")],
)
def test_truncated_metadata_names_the_file(tmp_path, capsys, fmt, meta):
    path = (_dp_store if fmt == "v3" else _v2_store)(tmp_path / "d.zarr")
    _truncate(path / meta)
    with pytest.raises(DatasetError) as e:
        ReplayBuffer.open(path)
    msg = str(e.value)
    assert "\n" not in msg and f"damaged zarr metadata ({meta}: JSONDecodeError" in msg, msg
    assert "re-collect it with dp-collect" in msg
    assert dp_data(["validate", str(path)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_quick_validate_skips_reads_but_finds_missing_chunks(tmp_path, capsys):
    path = _dp_store(tmp_path / "d.zarr")
    _flip_middle(path / "data/img/c/3/0/0/0")
    assert dp_data(["validate", "--quick", str(path)]) == 0  # the flipped chunk is not read
    assert "quick: chunk data not read" in capsys.readouterr().out
    assert dp_data(["validate", str(path)]) == 1
    assert "data/img: unreadable" in capsys.readouterr().err
    (path / "data/action/c/0/0").unlink()
    assert dp_data(["validate", "--quick", str(path)]) == 1
    err = capsys.readouterr().err
    assert "data/action: 1 chunk(s) missing" in err and "checksum" not in err, err
    assert [p.key for p in find_problems(ReplayBuffer.open(path), quick=True)] == ["data/action"]


@pytest.mark.parametrize(
    "shape, hint",
    [((10, 8, 8), "has no channel axis; expected images [T, H, W, C]"), ((10, 3, 8, 8), "np.moveaxis(arr, 1, -1)")],
)
def test_image_without_channels_last_is_rejected(tmp_path, capsys, shape, hint):
    buf = ReplayBuffer.create(tmp_path / "d.zarr")
    rng = np.random.default_rng(0)
    buf.add_episode({"action": np.zeros((10, 2), np.float32), "img": rng.integers(0, 256, shape, dtype=np.uint8)})
    with pytest.raises(DatasetError, match="C in 1/3/4") as e:
        validate(ReplayBuffer.open(tmp_path / "d.zarr"))
    assert hint in str(e.value)
    if len(shape) == 3:
        assert "arr[..., None]" in str(e.value)
    assert dp_data(["validate", str(tmp_path / "d.zarr")]) == 1
    assert f"data/img: shape {shape}" in capsys.readouterr().err


def test_stale_temp_dirs_of_dead_writers_are_removed(tmp_path):
    from dp.data.atomic import atomic_store

    with pytest.raises(ProcessLookupError):
        os.kill(DEAD_PID, 0)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dst = tmp_path / "out.zarr"
        for pid in (DEAD_PID, live.pid):
            (tmp_path / f"out.zarr.tmp-{pid}").mkdir()
            (tmp_path / f"out.zarr.tmp-{pid}/chunk").write_bytes(b"x")
        (tmp_path / f"out.zarr.old-{DEAD_PID}").mkdir()
        (tmp_path / f"other.zarr.tmp-{DEAD_PID}").mkdir()  # another destination's: not ours to touch
        dst.mkdir()  # a previous store, replaced below
        with atomic_store(dst, overwrite=True) as tmp:
            ReplayBuffer.create(tmp).add_episode({"action": np.zeros((2, 1), np.float32)})
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            f"other.zarr.tmp-{DEAD_PID}", "out.zarr", f"out.zarr.tmp-{live.pid}"
        ]
        assert ReplayBuffer.open(dst).n_steps == 2
    finally:
        live.kill()
        live.wait()
    # the helpers the checkpoint writer shares: prefix match, live pids (ours) kept
    from dp.data.atomic import fsync_tree, remove_stale_tmp

    (tmp_path / f".step_1.tmp-{os.getpid()}").mkdir()
    (tmp_path / f".latest.tmp-{DEAD_PID}").symlink_to("out.zarr")
    (tmp_path / f".step_2.tmp-{DEAD_PID}").mkdir()
    assert remove_stale_tmp(tmp_path, ".step_") == [tmp_path / f".step_2.tmp-{DEAD_PID}"]
    assert remove_stale_tmp(tmp_path, ".latest") == [tmp_path / f".latest.tmp-{DEAD_PID}"]
    assert (tmp_path / f".step_1.tmp-{os.getpid()}").is_dir() and (tmp_path / "out.zarr").is_dir()
    fsync_tree(tmp_path)  # runs over files, directories and symlinks alike
