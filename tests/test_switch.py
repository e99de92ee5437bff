"""Switch-DiT: level-gated channel masks, route caching, the diffusion prior loss."""
import numpy as np
import torch

from dp.core.switch import LevelGatedMask, jensen_shannon, sliding_prior
from dp.data import Normalizer
from dp.policies.dit import DiTPolicy

META = {"action": [2], "obs": {"state": [4]}}


def _policy(**kw):
    policy = DiTPolicy(META, dim=32, depth=3, heads=2, switch={"num_experts": 3, "top_k": 2}, **kw)
    rng = np.random.default_rng(0)
    policy.set_normalizer(Normalizer.fit({"action": rng.normal(size=(50, 2)), "state": rng.normal(size=(50, 4))}))
    return policy


def _randomize(module):
    torch.manual_seed(1)
    for p in module.parameters():  # adaLN-Zero and zero experts: a fresh block is the identity
        if not p.any():
            torch.nn.init.normal_(p, std=0.1)


def test_a_fresh_mask_is_one_and_routes_read_the_level_only():
    mask = LevelGatedMask(dim=8, num_experts=3, top_k=2)
    x, level = torch.randn(2, 5, 8), torch.randn(2, 1, 8)
    assert torch.equal(mask(x, level), torch.ones_like(x))
    _randomize(mask)
    m1, g1 = mask(x, level), mask.last_gates
    m2, g2 = mask(torch.randn_like(x), level), mask.last_gates
    assert torch.equal(g1, g2) and not torch.allclose(m1, m2)  # same experts, content-dependent mask
    assert ((g1 > 0).sum(-1) == 2).all()
    # per-token levels take the per-token path and agree with the per-sample one where levels agree
    torch.testing.assert_close(mask(x, level.expand(2, 5, 8)), m1)


def test_cached_routes_predict_what_the_router_predicts():
    policy = _policy(sampler={"name": "ddim", "steps": 5})
    _randomize(policy.dit)
    policy.eval()
    obs = {"state": torch.randn(3, 2, 4)}
    policy.generator = torch.Generator().manual_seed(0)
    cached = policy.predict_action(obs)
    assert policy.routes.applies(policy.sampler) and policy.dit.blocks[0].switch.step_cache
    policy.routes.enabled = False
    policy.generator = torch.Generator().manual_seed(0)
    torch.testing.assert_close(policy.predict_action(obs), cached, atol=1e-5, rtol=1e-5)


def test_prior_windows_slide_with_the_level():
    prior = sliding_prior(levels=100, units=12, width=8, alpha=4.0)
    assert (prior.sum(1) == 8).all()
    assert prior[0, :8].all() and prior[-1, -8:].all()
    assert (prior[0] * prior[-1]).sum() == 4  # 12 units, two windows of 8: the ends still share 4
    assert (prior[0] * prior[1]).sum() == 8   # neighbouring levels share their window
    wide = sliding_prior(levels=100, units=30, width=10)
    assert (wide[0] * wide[-1]).sum() == 0    # distant levels are isolated when the units allow it
    a = torch.tensor([[0.5, 0.5, 0.0]])
    assert float(jensen_shannon(a, a)) < 1e-6 and float(jensen_shannon(a, torch.tensor([[0.0, 0.0, 1.0]]))) > 0.6


def test_the_prior_loss_trains_the_gates_and_is_logged_per_level_bucket():
    policy = _policy()
    out = policy.compute_loss({"obs": {"state": torch.randn(16, 2, 4)}, "action": torch.randn(16, 16, 2)})
    assert float(out["switch_prior_loss"]) > 0
    torch.testing.assert_close(out["loss"], out["mse"] + policy.switch_weight * out["switch_prior_loss"])
    assert any(k.startswith("switch/usage_b") for k in out)
    out["loss"].backward()
    assert policy.dit.blocks[0].switch.gate[1].weight.grad.abs().sum() > 0
    off = DiTPolicy(META, dim=32, depth=3, heads=2, switch={"num_experts": 3, "top_k": 2, "prior_weight": 0.0})
    assert off.switch_weight == 0.0


def test_routing_against_level_is_tabled_and_plotted(tmp_path):
    from dp.eval.routing import plot_routing, routing_table

    policy = _policy().eval()
    _randomize(policy.dit)
    table = routing_table(policy, n_levels=11)
    assert len(table["layers"]) == 3 and len(table["layers"][0]["probs"]) == 11
    assert all(sum(row) == 2 for row in table["layers"][0]["chosen"])  # top-2 of 3 at every level
    assert plot_routing(table, tmp_path / "routing.png").stat().st_size > 0
