import numpy as np
import pytest
import torch

from dp.data import DatasetError, Normalizer


def test_limits_and_gaussian_roundtrip_and_constant_dims():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(500, 4)).astype(np.float32)
    x[:, 2] = 7.0  # a constant dimension
    for mode in ("limits", "gaussian"):
        norm = Normalizer.fit({"a": x}, mode=mode)
        z = norm.normalize("a", x)
        assert np.isfinite(z).all()
        assert np.allclose(z[:, 2], 0.0)  # constant dims map to 0, not inf
        if mode == "limits":
            assert np.allclose(z[:, [0, 1, 3]].min(0), -1, atol=1e-5)
            assert np.allclose(z[:, [0, 1, 3]].max(0), 1, atol=1e-5)
        else:
            assert np.allclose(z[:, [0, 1, 3]].mean(0), 0, atol=1e-4)
            assert np.allclose(z[:, [0, 1, 3]].std(0), 1, atol=1e-3)
        np.testing.assert_allclose(norm.unnormalize("a", z), x, rtol=1e-5, atol=1e-5)
        zt = norm.normalize("a", torch.from_numpy(x))
        np.testing.assert_allclose(zt.numpy(), z, atol=1e-6)


def test_state_dict_roundtrip_and_errors():
    x = np.random.default_rng(1).uniform(-5, 5, size=(100, 2, 3))
    norm = Normalizer.fit({"action": x, "state": x[..., :2]}, mode={"action": "limits", "state": "gaussian"})
    again = Normalizer.from_state_dict(norm.state_dict())
    assert again.keys() == norm.keys()
    t = torch.randn(4, 3)
    assert torch.allclose(norm.unnormalize("action", t), again.unnormalize("action", t))
    with pytest.raises(KeyError, match="fitted on"):
        norm.normalize("image", t)
    with pytest.raises(ValueError, match="expects last dim 3"):
        norm.normalize("action", torch.zeros(2, 5))
    with pytest.raises(DatasetError, match="mode"):
        Normalizer.fit({"a": x}, mode="minmax")
    with pytest.raises(DatasetError, match="NaN"):
        Normalizer.fit({"a": np.array([[np.nan]])})
