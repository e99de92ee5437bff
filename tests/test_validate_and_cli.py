import json

import h5py
import numpy as np
import pytest
import zarr

from data_helpers import random_episodes, write_pusht_style_v2
from dp.data import DatasetError, ReplayBuffer, SequenceDataset, validate
from dp.data.cli import main as dp_data


def _good_store(path, lengths=(4, 6)):
    buf = ReplayBuffer.create(path)
    for ep in random_episodes(lengths):
        buf.add_episode(ep)
    return zarr.open_group(str(path), mode="r+")


def _corrupt(kind, root):
    ends = root["meta/episode_ends"]
    if kind == "not_increasing":
        ends[:] = np.array([6, 4])
    elif kind == "empty_episode":
        root["meta"].create_array("tmp", shape=(3,), dtype="int64")
        del root["meta/episode_ends"]
        e = root["meta"].create_array("episode_ends", shape=(3,), dtype="int64")
        e[:] = [4, 4, 10]
    elif kind == "length_mismatch":
        ends[:] = np.array([4, 9])
    elif kind == "nan":
        a = root["data/state"]
        a[2, 1] = np.nan
    elif kind == "inf":
        a = root["data/action"]
        a[7, 0] = np.inf
    elif kind == "wrong_dtype":
        del root["data/action"]
        a = root["data"].create_array("action", shape=(10, 2), dtype="int32")
        a[:] = 1
    elif kind == "missing_action":
        del root["data/action"]


CASES = {
    "not_increasing": "meta/episode_ends: not increasing",
    "empty_episode": "meta/episode_ends: empty episodes",
    "length_mismatch": "data/action: length 10 on axis 0, but meta/episode_ends[-1] = 9",
    "nan": "data/state: non-finite value (NaN or inf) at step 2",
    "inf": "data/action: non-finite value (NaN or inf) at step 7",
    "wrong_dtype": "data/action: dtype int32, expected a float type",
    "missing_action": "data/action: missing",
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_corrupt_stores_are_rejected_naming_the_key(tmp_path, capsys, kind):
    path = tmp_path / f"{kind}.zarr"
    _corrupt(kind, _good_store(path))
    assert dp_data(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert CASES[kind] in err, err
    with pytest.raises(DatasetError, match="Invalid dataset"):
        validate(ReplayBuffer.open(path))
    # the training loader refuses it too (it must never train on a corrupt store)
    if kind != "missing_action":
        with pytest.raises(DatasetError):
            SequenceDataset(path, horizon=2, n_obs_steps=1, n_action_steps=1)


def test_valid_store_info_and_validate(tmp_path, capsys):
    path = tmp_path / "ok.zarr"
    _good_store(path)
    assert dp_data(["validate", str(path)]) == 0
    assert dp_data(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert info["episodes"] == 2 and info["steps"] == 10
    assert info["keys"]["state"] == {"shape": [10, 5], "dtype": "float32"}
    assert info["episode_length"]["min"] == 4 and info["episode_length"]["max"] == 6
    assert dp_data(["validate", str(tmp_path / "nope.zarr")]) == 2


def test_info_describes_diffusion_policy_v2_store(tmp_path, capsys):
    write_pusht_style_v2(tmp_path / "pusht.zarr", lengths=(7, 3, 12))
    assert dp_data(["info", str(tmp_path / "pusht.zarr")]) == 0
    out = capsys.readouterr().out
    assert "zarr format 2" in out and "episodes 3, steps 22" in out
    assert "data/img" in out and "(22, 96, 96, 3)" in out and "float32" in out  # as published: 0..255 floats
    assert "data/keypoint" in out and "(22, 9, 2)" in out


def _write_robomimic(path, lengths=(5, 3, 4)):
    rng = np.random.default_rng(0)
    demos = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1})
        # written out of numeric order on purpose: demo_10 must come after demo_2
        for n, L in zip((10, 2, 0), lengths):
            g = data.create_group(f"demo_{n}")
            demo = {
                "actions": rng.normal(size=(L, 7)).astype(np.float64),
                "robot0_eef_pos": rng.normal(size=(L, 3)),
                "robot0_eef_quat": rng.normal(size=(L, 4)),
                "robot0_gripper_qpos": rng.normal(size=(L, 2)),
                "object": rng.normal(size=(L, 10)),
                "agentview_image": rng.integers(0, 256, size=(L, 8, 8, 3), dtype=np.uint8),
                "robot0_eye_in_hand_image": rng.integers(0, 256, size=(L, 8, 8, 3), dtype=np.uint8),
            }
            g.create_dataset("actions", data=demo["actions"])
            for k in [k for k in demo if k != "actions"]:
                g.create_dataset(f"obs/{k}", data=demo[k])
            demos[n] = demo
    return demos


def test_import_robomimic(tmp_path, capsys):
    src = tmp_path / "lift.hdf5"
    demos = _write_robomimic(src)
    dst = tmp_path / "lift.zarr"
    rc = dp_data(["import-robomimic", str(src), str(dst), "--state-keys", "robot0_eef_pos,object"])
    assert rc == 0, capsys.readouterr().err
    buf = ReplayBuffer.open(dst)
    assert buf.episode_ends.tolist() == [4, 7, 12]  # demo_0 (4), demo_2 (3), demo_10 (5)
    assert buf["state"].shape == (12, 13)
    # each camera once, under its robomimic name; agent_pos as dp's robosuite tasks observe it
    assert "img" not in buf and buf["agentview_image"].dtype == np.uint8 and "robot0_eye_in_hand_image" in buf
    assert buf.attrs["cameras"] == ["agentview_image", "robot0_eye_in_hand_image"]
    np.testing.assert_allclose(buf.get_episode(0)["agent_pos"], np.concatenate(
        [demos[0][k] for k in ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")], 1), rtol=1e-6)
    ds = SequenceDataset(dst, horizon=4, n_obs_steps=2, n_action_steps=2,
                         obs_keys={"image": ["agentview_image", "robot0_eye_in_hand_image"], "agent_pos": "agent_pos"})
    assert ds.sample_shapes()["obs"] == {"image": [2, 3, 8, 8], "agent_pos": [9]}
    np.testing.assert_allclose(buf.get_episode(2)["action"], demos[10]["actions"], rtol=1e-6)
    np.testing.assert_allclose(
        buf.get_episode(1)["state"], np.concatenate([demos[2]["robot0_eef_pos"], demos[2]["object"]], 1), rtol=1e-6
    )
    assert buf.attrs["env_args"]["env_name"] == "Lift"
    assert dp_data(["validate", str(dst)]) == 0
    # a bad state key fails clearly and leaves no output behind
    rc = dp_data(["import-robomimic", str(src), str(tmp_path / "bad.zarr"), "--state-keys", "nope"])
    assert rc == 2 and "lacks ['nope']" in capsys.readouterr().err
    assert not (tmp_path / "bad.zarr").exists()
    assert not list(tmp_path.glob("bad.zarr.tmp-*"))


def test_dp_eval_reports_a_missing_checkpoint_without_a_traceback(tmp_path, monkeypatch, capsys):
    import sys

    from dp.eval.cli import main as dp_eval

    for args, message in (([], "error: No checkpoint at"),
                          (["n_episodes=0"], "error: n_episodes: expected an integer >= 1, found 0"),
                          (["n_envs=0"], "error: n_envs: expected an integer >= 1, found 0")):
        monkeypatch.setattr(sys, "argv", ["dp-eval", f"checkpoint={tmp_path / 'none'}", *args])
        with pytest.raises(SystemExit) as exit_info:
            dp_eval()
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(message) and len(err.strip().splitlines()) == 1, err


def test_dp_eval_reports_non_finite_predictions(tmp_path, monkeypatch, capsys):
    import sys

    import torch

    from dp.eval.cli import main as dp_eval
    from train_helpers import tiny_checkpoint

    from dp.policies.registry import load_policy

    policy = load_policy(tiny_checkpoint(tmp_path / "run"))
    with torch.no_grad():  # finite weights whose predictions overflow: the checkpoint loads, NaN comes out
        for name, p in policy.named_parameters():
            if not name.startswith("normalizer"):
                p.mul_(1e30)
    tiny_checkpoint(tmp_path / "blown", policy)
    monkeypatch.setattr(sys, "argv", ["dp-eval", f"checkpoint={tmp_path / 'blown'}", "n_episodes=3", "n_envs=3",
                                      "n_videos=0", "progress=false"])
    dp_eval()
    captured = capsys.readouterr()
    assert "warning: 3 of 3 episodes ended on a non-finite (NaN/inf) prediction" in captured.err
    report = json.loads((tmp_path / "blown" / "eval" / "report.json").read_text())
    assert report["nonfinite_episodes"] == 3 and report["success_rate"] == 0.0
    assert all(e["nonfinite"] and e["length"] == 0 for e in report["per_task"]["toy"]["episode_results"])


def test_dp_eval_n_action_steps_sets_how_often_the_policy_predicts(tmp_path, monkeypatch, capsys):
    import sys

    from dp.eval.cli import main as dp_eval
    from train_helpers import tiny_checkpoint

    tiny_checkpoint(tmp_path / "run")  # horizon 8, n_obs_steps 2, trained n_action_steps 4
    calls = {}
    for n in (4, 1):
        out = tmp_path / f"eval_{n}"
        monkeypatch.setattr(sys, "argv", ["dp-eval", f"checkpoint={tmp_path / 'run'}", "n_episodes=2", "n_envs=2",
                                          "n_videos=0", "progress=false", f"n_action_steps={n}", "max_steps=24",
                                          f"output_dir={out}"])
        dp_eval()
        report = json.loads((out / "report.json").read_text())
        assert report["n_action_steps"] == n and f"actions executed per chunk: {n}" in (out / "report.md").read_text()
        calls[n] = report["latency_ms"]["calls"]
    assert calls[1] >= 3 * calls[4]  # one prediction per step, against one per 4 steps
    monkeypatch.setattr(sys, "argv", ["dp-eval", f"checkpoint={tmp_path / 'run'}", "n_action_steps=8"])
    with pytest.raises(SystemExit) as exit_info:
        dp_eval()
    assert exit_info.value.code == 2
    assert "n_action_steps: expected an integer in [1, horizon - n_obs_steps + 1 = 7], found 8" in capsys.readouterr().err


def test_dp_eval_takes_its_task_eval_recipe_unless_the_command_line_sets_a_key(tmp_path, monkeypatch, capsys):
    import sys

    from dp.eval.cli import main as dp_eval
    from train_helpers import tiny_checkpoint

    tiny_checkpoint(tmp_path / "run", eval_recipe={"n_action_steps": 1, "initial_noise": "episode"})  # trains 4
    for args, n in (([], 1), (["n_action_steps=2"], 2)):
        out = tmp_path / f"eval_{n}"
        monkeypatch.setattr(sys, "argv", ["dp-eval", f"checkpoint={tmp_path / 'run'}", "n_episodes=2", "n_envs=2",
                                          "n_videos=0", "progress=false", "max_steps=8", f"output_dir={out}", *args])
        dp_eval()
        report = json.loads((out / "report.json").read_text())
        assert report["n_action_steps"] == n and report["initial_noise"] == "episode"
    tiny_checkpoint(tmp_path / "bad", eval_recipe={"horizon": 4})
    monkeypatch.setattr(sys, "argv", ["dp-eval", f"checkpoint={tmp_path / 'bad'}"])
    with pytest.raises(SystemExit) as exit_info:
        dp_eval()
    assert exit_info.value.code == 2
    assert "eval_recipe sets ['horizon'], which are not inference settings" in capsys.readouterr().err


def test_dp_eval_initial_noise_is_recorded_and_checked(tmp_path, monkeypatch, capsys):
    import sys

    from dp.eval.cli import main as dp_eval
    from train_helpers import tiny_checkpoint

    tiny_checkpoint(tmp_path / "run")  # trained with initial_noise: call
    out = tmp_path / "eval"
    monkeypatch.setattr(sys, "argv", ["dp-eval", f"checkpoint={tmp_path / 'run'}", "n_episodes=2", "n_envs=2",
                                      "n_videos=0", "progress=false", "initial_noise=episode", "max_steps=8",
                                      f"output_dir={out}"])
    dp_eval()
    report = json.loads((out / "report.json").read_text())
    assert report["initial_noise"] == "episode" and "initial noise: episode" in (out / "report.md").read_text()
    monkeypatch.setattr(sys, "argv", ["dp-eval", f"checkpoint={tmp_path / 'run'}", "initial_noise=fixed"])
    with pytest.raises(SystemExit) as exit_info:
        dp_eval()
    assert exit_info.value.code == 2
    assert "initial_noise: expected one of ('call', 'episode'), found 'fixed'" in capsys.readouterr().err
