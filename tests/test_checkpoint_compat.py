"""Checkpoints written before the denoising-policy composition (format 2: ``tokenizer.*``,
``head.*``, ``anchor_score.*`` state names) load and predict exactly what they predicted then."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from dp.checkpoint import CheckpointError
from dp.policies import Policy
from dp.policies.registry import load_policy
from train_helpers import tiny_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "format2_dit"  # written by dp at commit 76f9f1d


def test_a_format_2_checkpoint_loads_and_predicts_as_before():
    expected = json.loads((FIXTURE / "expected.json").read_text())
    meta = json.loads((FIXTURE / "checkpoints" / "latest" / "meta.json").read_text())
    assert meta["format"] == 2
    policy = Policy.from_checkpoint(FIXTURE, ema=False)
    obs = {"state": torch.tensor(expected["obs"])}
    for name, steps in (("ddim", 10), ("truncated", 2)):
        policy.set_sampler(name, steps)
        policy.generator = torch.Generator().manual_seed(0)
        torch.testing.assert_close(policy.predict_action(obs), torch.tensor(expected[name]), rtol=1e-5, atol=1e-5)


def test_a_checkpoint_from_a_newer_dp_is_refused(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "run")
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["format"] += 1
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="written by a newer dp .* upgrade dp"):
        load_policy(ckpt)
    shutil.rmtree(tmp_path / "run")
