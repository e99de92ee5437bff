"""LeRobotDataset v3.0 <-> dp stores. The fixture was written by lerobot 0.4.4's own dataset code
(scripts/lerobot_check/make_fixture.py): 3 episodes of 12, 9 and 15 frames, state [ep, t, t/2, -t],
action [t/10, -ep], a 32 px AV1 camera whose red channel is 8 t and green 80 ep, two tasks."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dp.data import DatasetError, ReplayBuffer
from dp.data.cli import main as dp_data
from dp.data.lerobot import export_lerobot, import_lerobot

FIXTURE = Path(__file__).parent / "fixtures" / "lerobot_v3_tiny"


def test_a_dataset_written_by_lerobot_imports(tmp_path, capsys):
    out = tmp_path / "tiny.zarr"
    assert dp_data(["import-lerobot", str(FIXTURE), str(out)]) == 0, capsys.readouterr().err
    buf = ReplayBuffer.open(out)
    assert buf.episode_ends[:].tolist() == [12, 21, 36]
    assert sorted(buf.keys()) == ["action", "front_image", "state", "task_id"]
    state, action, image = buf["state"][:], buf["action"][:], buf["front_image"][:]
    ep, t = state[:, 0].astype(int), state[:, 1].astype(int)
    np.testing.assert_array_equal(ep, np.repeat([0, 1, 2], [12, 9, 15]))
    np.testing.assert_array_equal(t, np.concatenate([np.arange(12), np.arange(9), np.arange(15)]))
    np.testing.assert_allclose(action, np.stack([t / 10, -ep], 1), atol=1e-6)
    assert image.shape == (36, 32, 32, 3) and image.dtype == np.uint8
    # every frame is its own episode's and step's (AV1 is lossy: a few levels)
    assert np.abs(image[:, 16, 16, 0].astype(int) - 8 * t).max() <= 4
    assert np.abs(image[:, 16, 16, 1].astype(int) - 80 * ep).max() <= 4
    assert buf.attrs["instructions"] == ["push the block", "reach the goal"]
    assert buf["task_id"][:].tolist() == [0] * 12 + [1] * 9 + [0] * 15
    assert buf.attrs["lerobot"]["features"]["front_image"] == "observation.images.front"
    assert dp_data(["validate", str(out)]) == 0


def _store_with_camera(path: Path) -> ReplayBuffer:
    rng = np.random.default_rng(0)
    buf = ReplayBuffer.create(path)
    yy, xx = np.mgrid[0:24, 0:24]
    for e, length in enumerate((6, 9)):
        frames = np.stack([np.stack([(xx * 8 + 10 * t) % 256, (yy * 8) % 256, np.full_like(xx, 40 * e)], -1)
                           for t in range(length)]).astype(np.uint8)
        buf.add_episode({"action": rng.normal(size=(length, 2)).astype(np.float32),
                         "state": rng.normal(size=(length, 5)).astype(np.float32),
                         "agent_pos": rng.normal(size=(length, 2)).astype(np.float32),
                         "img": frames, "task_id": np.full(length, e, np.int64)})
    buf.attrs.update({"instructions": ["open the drawer", "close the drawer"], "fps": 20})
    return buf


def test_a_dp_store_round_trips_through_lerobot(tmp_path, capsys):
    src = _store_with_camera(tmp_path / "src.zarr")
    lr = tmp_path / "lerobot"
    assert dp_data(["export-lerobot", str(tmp_path / "src.zarr"), str(lr)]) == 0, capsys.readouterr().err
    info = json.loads((lr / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 20 and info["total_frames"] == 15
    # lerobot's names: the robot's own state, the full state, one camera
    assert {"observation.state", "observation.environment_state", "observation.images.image", "action"} \
        <= set(info["features"])
    back = import_lerobot(lr, tmp_path / "back.zarr")
    assert back.episode_ends[:].tolist() == src.episode_ends[:].tolist()
    for key in ("action", "state", "agent_pos", "task_id"):
        np.testing.assert_array_equal(back[key][:], src[key][:])
    frames, again = src["img"][:].astype(int), back["img"][:].astype(int)
    assert np.abs(frames - again).mean() < 3  # AV1 at crf 20, 24 px frames
    assert back.attrs["instructions"] == ["open the drawer", "close the drawer"]
    # and out again: the names it came with
    info2 = export_lerobot(tmp_path / "back.zarr", tmp_path / "lerobot2")
    assert set(info2["features"]) == set(info["features"])


def test_lerobot_input_errors_say_what_to_do(tmp_path):
    with pytest.raises(DatasetError, match="no meta/info.json"):
        import_lerobot(tmp_path, tmp_path / "x.zarr")
    old = tmp_path / "v21"
    shutil.copytree(FIXTURE, old)
    info = json.loads((old / "meta" / "info.json").read_text())
    (old / "meta" / "info.json").write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    with pytest.raises(DatasetError, match="format v2.1; dp reads v3.0. Convert it"):
        import_lerobot(old, tmp_path / "x.zarr")
    cut = tmp_path / "cut"
    shutil.copytree(FIXTURE, cut)
    next((cut / "videos").rglob("*.mp4")).write_bytes(b"")
    with pytest.raises(Exception):
        import_lerobot(cut, tmp_path / "y.zarr")
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "y.zarr").exists()


def test_an_imported_lerobot_dataset_trains(tmp_path):
    """Own data to a trained policy: the imported camera and state, mapped by obs_keys."""
    from dp.train.trainer import Trainer
    from train_helpers import TINY_DIT, train_cfg

    store = tmp_path / "tiny.zarr"
    import_lerobot(FIXTURE, store)
    cfg = train_cfg(store, tmp_path / "run", *TINY_DIT, "training.steps=3", "training.batch_size=4",
                    "+task.obs_keys={state: state, image: front_image}", "training.val_ratio=0",
                    "policy.image_encoder.crop=28", "policy.image_encoder.width=8")
    summary = Trainer(cfg).run()
    assert summary["steps"] == 3 and np.isfinite(summary["final_loss"])
    assert (tmp_path / "run" / "checkpoints" / "latest" / "weights.safetensors").is_file()
