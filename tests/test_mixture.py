"""Dataset mixtures: several real stores of different robots read as one dataset of unified samples."""
import numpy as np
import pytest

from dp.data import DatasetError, ReplayBuffer
from dp.data.mixture import MixtureDataset
from dp.data.unified import EEF_LIN_VEL, GRIPPER_OPEN, LEFT_OFFSET, embodiment


@pytest.fixture
def stores(mixture_stores):
    return mixture_stores


def _sources(stores, weights=(1.0, 1.0, 1.0)):
    return [{"path": stores["rs_lift"], "embodiment": "ur5e", "weight": weights[0]},
            {"path": stores["rs_two_arm_lift"], "embodiment": "two_arm_panda", "weight": weights[1]},
            {"path": stores["mw_reach"], "embodiment": "metaworld", "weight": weights[2]}]


def test_a_batch_holds_each_store_in_the_unified_space(stores):
    data = MixtureDataset(_sources(stores), horizon=8, n_obs_steps=2, n_action_steps=4)
    assert data.embodiments == ["ur5e", "two_arm_panda", "metaworld"]
    assert data.object_dim == max(data.object_dims) == 35  # Meta-World's 39 - 4
    idx = np.random.default_rng(0).permutation(len(data))[:64]
    batch = data.get_batch(idx)
    assert batch["obs"]["state"].shape == (64, 2, 128) and batch["action"].shape == (64, 8, 128)
    src, win = data.locate(idx)
    for k in range(0, 64, 7):  # each row is its own store's window, mapped by its own embodiment
        i = int(src[k])
        emb = embodiment(data.sources[i]["embodiment"])
        raw = data.datasets[i].get_batch(win[k:k + 1])
        np.testing.assert_allclose(emb.action_from_unified(batch["action"][k]), raw["action"][0], atol=1e-5)
        assert batch["embodiment"][k] == data.embodiments.index(emb.name) and batch["source"][k] == i
        assert not batch["action"][k][:, ~batch["action_mask"][k]].any()
        assert not batch["obs"]["state"][k][:, ~batch["state_mask"][k]].any()
        np.testing.assert_array_equal(batch["object_mask"][k], np.arange(data.object_dim) < data.object_dims[i])
    two_arm = batch["action_mask"][src == 1]
    assert two_arm[:, GRIPPER_OPEN + LEFT_OFFSET].all() and not batch["action_mask"][src == 0][:, 50:].any()
    # Meta-World has no rotation: its angular-velocity slots are masked, its linear ones are not
    assert batch["action_mask"][src == 2][:, EEF_LIN_VEL].all()


def test_sources_are_drawn_at_their_weights(stores):
    data = MixtureDataset(_sources(stores, (1.0, 1.0, 6.0)), horizon=8, n_obs_steps=2, n_action_steps=4)
    share = data.shares / data.shares.sum()
    np.testing.assert_allclose(share, [1 / 8, 1 / 8, 6 / 8], atol=0.01)
    src, win = data.locate(np.arange(len(data)))
    for i, d in enumerate(data.datasets):  # a source's share covers its windows before any repeats
        got = win[src == i]
        assert len(np.unique(got)) == min(len(got), len(d))


def test_normalizer_is_per_embodiment_and_keeps_masked_slots_at_zero(stores):
    data = MixtureDataset(_sources(stores), horizon=8, n_obs_steps=2, n_action_steps=4)
    norm = data.fit_normalizer()
    assert sorted(norm.keys()) == sorted(f"{k}__{e}" for k in ("state", "action", "object") for e in data.embodiments)
    batch = data.get_batch(np.arange(len(data)))
    for e, name in enumerate(data.embodiments):
        rows = batch["embodiment"] == e
        z = norm.normalize(f"action__{name}", batch["action"][rows])
        assert np.abs(z).max() <= 1.0 + 1e-5
        assert not z[..., ~batch["action_mask"][rows][0]].any()


def test_bad_mixtures_are_clear_errors(stores, tmp_path):
    with pytest.raises(DatasetError, match=r"weight must be a positive number, got 0"):
        MixtureDataset(_sources(stores, (1.0, 0, 1.0)))
    with pytest.raises(DatasetError, match=r"weight must be a positive number, got -2"):
        MixtureDataset(_sources(stores, (1.0, -2, 1.0)))
    with pytest.raises(DatasetError, match=r"no unified-space map for embodiment 'kuka'"):
        MixtureDataset([{"path": stores["rs_lift"], "embodiment": "kuka"}])
    # a store whose actions do not fit its embodiment: Meta-World's 4-d actions given as a Panda's
    with pytest.raises(DatasetError, match=r"'action' is \[4\] per step, but embodiment 'panda'"):
        MixtureDataset([{"path": stores["mw_reach"], "embodiment": "panda"}], horizon=8, n_obs_steps=2,
                       n_action_steps=4)
    # shapes that fit, but the store's attrs record another robot: a copy of the UR5e store relabelled
    copy = tmp_path / "relabelled.zarr"
    ReplayBuffer.open(stores["rs_lift"]).save(copy)
    buf = ReplayBuffer.open(copy, mode="r+")
    buf.attrs["embodiment"] = "sawyer"
    with pytest.raises(DatasetError, match=r"collected with embodiment 'sawyer'.*gives it 'ur5e'"):
        MixtureDataset([{"path": copy, "embodiment": "ur5e"}], horizon=8, n_obs_steps=2, n_action_steps=4)


def test_validation_split_reads_held_out_episodes_of_each_source(stores):
    data = MixtureDataset(_sources(stores), horizon=8, n_obs_steps=2, n_action_steps=4, val_ratio=0.4, seed=0)
    val = data.get_validation_dataset()
    assert 0 < len(val) and len(val) + len(data) > len(data)
    for d, v in zip(data.datasets, val.datasets):  # held-out episodes are not training ones
        assert not (d.episode_mask & v.episode_mask).any()
    batch = val.get_batch(np.arange(len(val)))
    assert set(np.unique(batch["source"])) == {i for i, v in enumerate(val.datasets) if len(v)}
