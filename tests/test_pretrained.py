"""Sharing a policy the huggingface_hub way: save_pretrained(dir) and Policy.from_pretrained(dir or owner/name).
The Hub path is not reachable here; these tests use local directories (the same loader runs after the download)."""
import json

import numpy as np
import pytest
import torch
import yaml

from dp.checkpoint import CheckpointError, load_train_state
from dp.policies import Policy
from test_checkpoint_security import _attacks
from train_helpers import tiny_checkpoint


def test_a_saved_policy_loads_back_and_predicts_the_same(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "run", step=7)
    policy = Policy.from_checkpoint(ckpt)
    out = policy.save_pretrained(tmp_path / "shared")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.yaml", "meta.json", "weights.safetensors"]
    assert json.loads((out / "meta.json").read_text())["step"] == 7
    assert yaml.safe_load((out / "config.yaml").read_text())["task"]["name"] == "toy"  # the checkpoint's whole config
    again = Policy.from_pretrained(out)
    for (k, a), b in zip(policy.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    obs = {"state": torch.randn(2, policy.n_obs_steps, 4)}
    policy.generator, again.generator = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    np.testing.assert_array_equal(policy.predict_action(obs), again.predict_action(obs))
    with pytest.raises(CheckpointError, match="shared policy .* not for resuming"):
        load_train_state(out)


def test_a_shared_policy_that_names_code_is_refused(tmp_path):
    from test_checkpoint_security import _craft

    ckpt = tiny_checkpoint(tmp_path / "run")
    shared = Policy.from_checkpoint(ckpt).save_pretrained(tmp_path / "shared")
    for name, cfg, marker in _attacks(shared, tmp_path):
        _craft(shared, cfg)
        with pytest.raises(CheckpointError, match=r"registered dp policy class|keys starting with '_'"):
            Policy.from_pretrained(shared)
        assert (marker.read_text() == "precious") if marker.name == "victim.txt" else not marker.exists(), name


def test_a_changed_file_is_refused(tmp_path):
    shared = Policy.from_checkpoint(tiny_checkpoint(tmp_path / "run")).save_pretrained(tmp_path / "shared")
    weights = shared / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(CheckpointError, match="does not match its sha256"):
        Policy.from_pretrained(shared)
