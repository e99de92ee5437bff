"""Angle observations (task.obs_angles): left in radians by the normalizer, seen as (sin, cos) by the encoder."""
import math

import numpy as np
import pytest
import torch

from dp.data import Normalizer
from dp.encoders.obs import ObsEncoder
from dp.encoders.state import StateEncoder
from dp.errors import ConfigError
from dp.policies import Policy
from dp.train.trainer import Trainer
from train_helpers import TINY_DIT, toy_dataset, train_cfg


def test_an_angle_and_the_same_angle_plus_two_pi_give_the_same_token():
    torch.manual_seed(0)
    enc = StateEncoder(5, 16, angles=[4])
    x = torch.randn(3, 2, 5)
    wrapped = x.clone()
    wrapped[..., 4] += 2 * math.pi
    torch.testing.assert_close(enc(x), enc(wrapped), atol=1e-5, rtol=1e-5)
    plain = StateEncoder(5, 16)  # without the option the wrap moves the token: the test can tell them apart
    assert not torch.allclose(plain(x), plain(wrapped), atol=1e-3)
    nudged = x.clone()
    nudged[..., 0] += 0.5  # the other dims still reach the token
    assert not torch.allclose(enc(x), enc(nudged), atol=1e-3)


def test_pass_through_leaves_the_angle_dims_in_radians():
    rng = np.random.default_rng(0)
    x = np.c_[rng.uniform(0, 500, (200, 2)), rng.uniform(0, 2 * np.pi, 200)]
    norm = Normalizer.fit({"state": x})
    norm.pass_through("state", [2])
    z = norm.normalize("state", x)
    np.testing.assert_allclose(z[:, 2], x[:, 2], rtol=1e-6)
    assert z[:, :2].min() >= -1 - 1e-5 and z[:, :2].max() <= 1 + 1e-5
    np.testing.assert_allclose(norm.unnormalize("state", z), x, rtol=1e-5)
    with pytest.raises(ValueError, match="3 dims; dim 3 is out of range"):
        norm.pass_through("state", [3])


@pytest.mark.parametrize("angles, match", [
    ({"image": [0]}, "not a low-dim observation; the low-dim observations are \\['state'\\]"),
    ({"state": [5]}, "distinct dims in \\[0, 5\\); got \\[5\\]"),
    ({"state": [1, 1]}, "distinct dims"),
])
def test_bad_obs_angles_name_what_was_expected(angles, match):
    meta = {"action": [2], "obs": {"state": [5], "image": [3, 32, 32]}, "angles": angles}
    with pytest.raises(ConfigError, match=match):
        ObsEncoder(meta, 16, 2)


def test_the_sequence_encoder_refuses_angles_rather_than_ignoring_them():
    from dp.encoders.tokens import ObservationTokens

    with pytest.raises(ConfigError, match="policy.obs_tokens=per_key"):
        ObservationTokens({"action": [2], "obs": {"state": [5]}, "angles": {"state": [4]}}, 16, 2)


def test_training_with_obs_angles_records_them_in_the_checkpoint(tmp_path):
    data = toy_dataset(tmp_path)
    cfg = train_cfg(data, tmp_path / "run", *TINY_DIT, "training.steps=4", "task.obs_angles={state: [3]}")
    Trainer(cfg).run()
    policy = Policy.from_checkpoint(tmp_path / "run")
    assert policy.config["shape_meta"]["angles"] == {"state": [3]}
    params = policy.normalizer.params["state"]
    assert params.scale[3] == 1 and params.offset[3] == 0 and params.scale[0] != 1
    assert policy.obs_encoder.encoders["state"].angles == [3]
    a = policy.predict_action({"state": torch.zeros(2, 2, 4)})
    assert a.shape == (2, 8, 2) and torch.isfinite(a).all()
