"""The diffusion policy models both modes of the bimodal toy expert; regression averages them."""
import numpy as np
import pytest
import torch

from dp.eval.rollout import eval_seeds, run_episodes
from dp.policies import Policy
from dp.train.trainer import Trainer
from train_helpers import toy_dataset, train_cfg


def _train_and_roll_out(tmp_path, policy: str, *overrides):
    data = toy_dataset(tmp_path, n_episodes=100)
    Trainer(train_cfg(data, tmp_path / policy, f"policy={policy}", "training.batch_size=64", *overrides)).run()
    p = Policy.from_checkpoint(tmp_path / policy)
    p.generator = torch.Generator().manual_seed(0)
    eps = run_episodes(p, "toy", eval_seeds(50), {}, n_envs=50, progress=False)["episodes"]
    modes = np.array([e["mode"] for e in eps])
    return np.mean([e["success"] for e in eps]), np.mean(modes == -1), np.mean(modes == 1)


# trains two policies (3500 steps) and rolls each out 50 times: 77 s on 2 shared cores. DiT solving the
# bimodal toy end to end stays in the fast suite via tests/test_truncated.py; `make test-slow` runs this.
@pytest.mark.slow
def test_dit_reaches_both_modes_and_mlp_bc_does_not(tmp_path):
    # one token per action: the toy's turns are sharp, and at this tiny size 4 actions per token (the
    # config default) scored 84% in one run, against 98% with 1
    success, left, right = _train_and_roll_out(
        tmp_path, "dit", "policy.dim=64", "policy.depth=2", "policy.heads=4", "policy.action_patch=1", "training.steps=2000",
        "training.lr=3e-3")
    assert success >= 0.9, success
    assert left >= 0.25 and right >= 0.25, (left, right)

    bc_success, bc_left, bc_right = _train_and_roll_out(tmp_path, "mlp_bc", "policy.dim=64", "training.steps=1500")
    # regression to the mean drives into the obstacle, or commits to a single side
    assert bc_success < 0.5 or min(bc_left, bc_right) < 0.1, (bc_success, bc_left, bc_right)
