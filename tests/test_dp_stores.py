"""diffusion_policy's stores as they are published: PushT's float32 frames holding 0..255, no
agent_pos (it is state[0:2]), and the zipped store (.zarr.zip). Each opens, validates and trains."""
import json
import subprocess
import sys

import numpy as np
import pytest

from data_helpers import write_pusht_style_v2
from dp.data import DatasetError, ReplayBuffer, SequenceDataset
from dp.data.cli import main as dp_data
from dp.errors import ConfigError
from train_helpers import TINY_DIT


@pytest.mark.parametrize("zipped", [False, True], ids=["directory", "zip"])
def test_the_published_pusht_layout_validates_and_reads_as_uint8_frames(tmp_path, zipped, capsys):
    path = tmp_path / ("pusht.zarr.zip" if zipped else "pusht.zarr")
    arrays, _ = write_pusht_style_v2(path, lengths=(7, 3, 12), zipped=zipped)
    assert dp_data(["validate", str(path)]) == 0
    assert dp_data(["info", str(path)]) == 0 and "episodes 3, steps 22" in capsys.readouterr().out
    ds = SequenceDataset(path, horizon=4, n_obs_steps=2, n_action_steps=2,
                         obs_keys={"agent_pos": "state[0:2]", "image": "img"})
    assert "read as uint8" in capsys.readouterr().out
    item = ds[0]
    assert item["obs"]["image"].dtype == np.uint8
    np.testing.assert_array_equal(item["obs"]["image"][-1], np.moveaxis(arrays["img"][0], -1, 0).astype(np.uint8))
    np.testing.assert_array_equal(item["obs"]["agent_pos"][-1], arrays["state"][0, :2])
    assert ds.sample_shapes()["obs"]["agent_pos"] == [2]
    if zipped:
        with pytest.raises(DatasetError, match="opens read-only; unzip it"):
            ReplayBuffer.open(path, mode="r+")


def test_float_frames_on_another_scale_are_refused_with_the_fix(tmp_path, capsys):
    import zarr

    for scale, message in ((1 / 255, "0..1 scaled"), (2.0, "outside \\[0, 255\\]")):
        path = tmp_path / f"scaled_{scale:.3f}.zarr"
        arrays, _ = write_pusht_style_v2(path, lengths=(4, 4))
        zarr.open_group(str(path), mode="r+")["data/img"][:] = arrays["img"] * scale
        assert dp_data(["validate", str(path)]) == 1
        assert "Re-save them as uint8" in capsys.readouterr().err
        with pytest.raises(DatasetError, match=message):
            SequenceDataset(path, horizon=4, n_obs_steps=1, n_action_steps=1, obs_keys={"image": "img"})


def test_column_specs_are_checked(tmp_path):
    path = tmp_path / "p.zarr"
    write_pusht_style_v2(path, lengths=(4, 4))
    kw = {"horizon": 4, "n_obs_steps": 1, "n_action_steps": 1}
    with pytest.raises(ConfigError, match="slice bounds, no step"):
        SequenceDataset(path, obs_keys={"agent_pos": "state[0:2:1]"}, **kw)
    with pytest.raises(DatasetError, match="selects no column of data/state"):
        SequenceDataset(path, obs_keys={"agent_pos": "state[7:9]"}, **kw)
    with pytest.raises(DatasetError, match="columns of an image array"):
        SequenceDataset(path, obs_keys={"image": "img[0:1]"}, **kw)
    both = SequenceDataset(path, obs_keys={"low": ["state[0:2]", "state[4:5]"]}, **kw)
    assert both.sample_shapes()["obs"]["low"] == [3]


def test_a_pusht_format_zip_trains_an_image_policy_and_its_checkpoint_runs_in_the_env(tmp_path):
    """dp-train on the published layout (zip, float frames, no agent_pos), then dp-eval in dp's PushT env."""
    store = tmp_path / "pusht_cchi_v7_replay.zarr.zip"
    write_pusht_style_v2(store, lengths=(20, 20, 20), zipped=True)
    run = tmp_path / "run"
    train = subprocess.run(
        [sys.executable, "-m", "dp.train.cli", "task=pusht", "task.obs=image", f"task.dataset_path={store}",
         f"output_dir={run}", "logging.mode=disabled", "progress=false", "training.steps=3", "training.batch_size=4",
         "training.val_every=0", "training.checkpoint_every=0", "training.warmup_steps=1", *TINY_DIT],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "agent_pos = state[0:2]" in train.stdout and "read as uint8" in train.stdout
    config = (run / "checkpoints" / "latest" / "config.yaml").read_text()
    assert "state[0:2]" in config
    evaluate = subprocess.run(
        [sys.executable, "-m", "dp.eval.cli", f"checkpoint={run}", "n_episodes=1", "n_envs=1", "n_videos=0",
         "max_steps=6", "progress=false", f"output_dir={tmp_path / 'eval'}"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["episodes"] == 1 and report["nonfinite_episodes"] == 0
    final = report["per_task"]["pusht"]  # PushT's end-of-episode figures, averaged
    assert 0 <= final["mean_score"] <= 1 and 0 <= final["mean_coverage"] <= final["mean_score"] / 0.95 + 1e-6
