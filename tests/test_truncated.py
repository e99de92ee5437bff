"""Truncated diffusion around k-means anchors (DiffusionDrive)."""
import numpy as np
import pytest
import torch

from dp.data import Normalizer
from dp.diffusion.truncated import kmeans, nearest_anchor, sigmoid_focal_loss
from dp.policies import DiTPolicy

SHAPE_META = {"action": [3], "obs": {"state": [5]}}


def _policy(**kw):
    torch.manual_seed(0)
    kw = {"anchors": {"count": 4, "batch": 3}, "process": {"prediction": "x0"}, **kw}
    p = DiTPolicy(SHAPE_META, n_obs_steps=1, dim=32, depth=1, heads=2, action_patch=4, **kw)
    rng = np.random.default_rng(0)
    p.set_normalizer(Normalizer.fit({"action": rng.uniform(-1, 1, size=(100, 3)), "state": rng.normal(size=(100, 5))}))
    return p


def test_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-5.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    x = torch.cat([c + 0.1 * torch.randn(200, 2, generator=g) for c in centres])
    found = kmeans(x, 3)
    dist = torch.cdist(found, centres).min(1).values
    assert (dist < 0.1).all(), found
    with pytest.raises(ValueError, match="at least k=5"):
        kmeans(x[:4], 5)


def test_winner_is_the_nearest_anchor_and_focal_loss_rewards_it():
    anchors = torch.stack([torch.full((16, 3), v) for v in (-0.8, 0.0, 0.8)])
    x0 = torch.stack([torch.full((16, 3), 0.7), torch.full((16, 3), -0.1)])
    win = nearest_anchor(x0, anchors)
    assert win.tolist() == [2, 1]
    right = torch.tensor([[-4.0, -4.0, 4.0], [-4.0, 4.0, -4.0]])
    wrong = torch.tensor([[4.0, -4.0, -4.0], [4.0, -4.0, -4.0]])
    assert sigmoid_focal_loss(right, win) < 0.01 < sigmoid_focal_loss(wrong, win)


def test_anchor_branch_trains_scores_and_needs_x0_prediction():
    policy = _policy().train()
    policy.plugins["anchors"].anchors.copy_(torch.rand(4, 16, 3) * 2 - 1)
    batch = {"obs": {"state": torch.randn(6, 1, 5)}, "action": torch.rand(6, 16, 3) * 2 - 1}
    out = policy.compute_loss(batch)
    out["loss"].backward()
    assert {"diffusion_loss", "anchor_cls", "anchor_rec"} <= set(out)
    assert policy.plugins["anchors"].score.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="prediction 'x0'"):
        _policy(process={"prediction": "eps"})
    with pytest.raises(ValueError, match="trained with anchors"):
        DiTPolicy(SHAPE_META, sampler={"name": "truncated", "steps": 2})


def test_truncated_sampling_returns_a_denoised_anchor_and_falls_back_when_unsure():
    policy = _policy().eval()
    policy.plugins["anchors"].anchors.copy_(torch.rand(4, 16, 3) * 2 - 1)
    obs = {"state": torch.randn(5, 1, 5)}
    policy.set_sampler("truncated", 2, fallback_score=0.0)  # never unsure
    out = policy.predict_action(obs)
    assert out.shape == (5, 16, 3) and policy.sampler.fallbacks == 0 and policy.sampler.rows == 5
    policy.set_sampler("truncated", 2, fallback_score=1.0)  # always unsure: every row sampled in full
    policy.predict_action(obs)
    assert policy.sampler.fallbacks == policy.sampler.rows == 5
    with pytest.raises(ValueError, match="fallback_score must be in"):
        policy.set_sampler("truncated", 2, fallback_score=2.0)


def test_one_policy_serves_full_streaming_and_truncated_sampling_on_toy(tmp_path):
    """Trained with the streaming level mix and the anchor branch, one network solves the
    bimodal toy task with DDIM, streaming and truncated sampling (about 1 min on 2 idle cores)."""
    from dp.eval.rollout import eval_seeds, run_episodes
    from dp.policies import Policy
    from dp.train.trainer import Trainer
    from train_helpers import toy_dataset, train_cfg

    data = toy_dataset(tmp_path, n_episodes=100)
    Trainer(train_cfg(data, tmp_path / "run", "policy=dit", "policy.dim=64", "policy.depth=2", "policy.heads=4",
                      "policy.action_patch=1", "policy.n_obs_steps=1", "policy.process.prediction=x0",
                      "policy.streaming.train_fraction=0.8", "policy.anchors.count=8", "training.steps=1500",
                      "training.batch_size=64", "training.lr=3e-3")).run()
    policy = Policy.from_checkpoint(tmp_path / "run")
    rates = {}
    for name, steps in (("ddim", 10), ("streaming", 4), ("truncated", 2)):
        policy.set_sampler(name, steps)
        policy.generator = torch.Generator().manual_seed(0)
        eps = run_episodes(policy, "toy", eval_seeds(40), {}, n_envs=40, progress=False)["episodes"]
        rates[name] = np.mean([e["success"] for e in eps])
    assert min(rates.values()) >= 0.8, rates
