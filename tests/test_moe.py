"""Noise-routed mixture of experts (MoDE's ffn): routing reads the level only, sparse dispatch
equals the dense sum, the balance loss trains the router."""
import pytest
import torch

from dp.core import DiT
from dp.core.moe import NoiseRoutedMoE, moe_ffn


def _moe(**kw):
    torch.manual_seed(0)
    return NoiseRoutedMoE(16, 32, **kw)


def test_sparse_dispatch_equals_dense_weighted_sum():
    moe = _moe(num_experts=4, top_k=2, shared_expert=True).eval()
    x, level_emb = torch.randn(3, 5, 16), torch.randn(3, 5, 16)
    gates, _ = moe.route(level_emb)
    assert ((gates > 0).sum(-1) == 2).all() and torch.allclose(gates.sum(-1), torch.ones(3, 5))
    dense = sum(gates[..., e : e + 1] * moe.experts[e](x) for e in range(4)) + moe.shared(x)
    torch.testing.assert_close(moe(x, level_emb), dense, atol=1e-5, rtol=1e-5)


def test_routes_depend_on_level_not_on_token_content():
    torch.manual_seed(1)
    dit = DiT(dim=32, depth=2, heads=4, ffn=moe_ffn(num_experts=4, top_k=1)).eval()
    cond = torch.randn(2, 3, 32)
    level = torch.full((2, 6), 0.4)
    routes, probs = [], []
    for x in (torch.randn(2, 6, 32), 5 * torch.randn(2, 6, 32)):
        dit(x, level, cond=cond)
        routes.append([blk.ffn.last_gates.clone() for blk in dit.blocks])
        probs.append([blk.ffn.last_probs.clone() for blk in dit.blocks])
    for a, b in zip(routes[0] + probs[0], routes[1] + probs[1]):
        torch.testing.assert_close(a, b)
    dit(torch.randn(2, 6, 32), torch.full((2, 6), 0.9), cond=cond)  # another level: another distribution
    assert all(not torch.allclose(p, blk.ffn.last_probs) for p, blk in zip(probs[0], dit.blocks))


def test_balance_loss_reaches_the_router_and_is_one_when_uniform():
    moe = _moe(num_experts=4, top_k=2).train()
    x, level_emb = torch.randn(8, 4, 16), torch.randn(8, 1, 16)
    moe(x, level_emb)
    moe.aux_loss.backward()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0
    uniform = _moe(num_experts=4, top_k=2)
    torch.nn.init.zeros_(uniform.router.weight)
    torch.nn.init.zeros_(uniform.router.bias)
    uniform.eval()(torch.randn(64, 1, 16), torch.randn(64, 1, 16))
    # top-2 of a uniform router always picks the same 2 experts: frac = (1/2, 1/2, 0, 0), p = 1/4
    assert abs(uniform.aux_loss.item() - 1.0) < 1e-6


def test_training_samples_experts_from_the_router():
    moe = _moe(num_experts=4, top_k=1).train()
    level_emb = torch.zeros(4000, 1, 16)  # one level: the router's distribution is the same for every sample
    gates, probs = moe.route(level_emb)
    counts = (gates[:, 0] > 0).float().mean(0)
    torch.testing.assert_close(counts, probs[0, 0], atol=0.03, rtol=0)  # chosen at the router's rates
    moe.eval()
    gates, probs = moe.route(level_emb)
    assert (gates[:, 0].argmax(-1) == probs[0, 0].argmax()).all()  # inference: top-k, deterministic


def test_bad_top_k():
    with pytest.raises(ValueError, match="top_k must be in"):
        NoiseRoutedMoE(16, 32, num_experts=2, top_k=3)
