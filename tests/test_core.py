import pytest
import torch

from dp.core import DiT
from dp.core.layers import RMSNorm, modulate


def _randomize_zero_inits(dit: DiT) -> None:
    """A trained-looking model: the zero-initialised projections get random weights."""
    g = torch.Generator().manual_seed(0)
    for b in dit.blocks:
        if b.ada is not None:
            b.ada[1].weight.data = 0.05 * torch.randn(b.ada[1].weight.shape, generator=g)
        if b.cross is not None:
            b.cross.proj.weight.data = 0.05 * torch.randn(b.cross.proj.weight.shape, generator=g)
    if dit.final_ada is not None:
        dit.final_ada[1].weight.data = 0.05 * torch.randn(dit.final_ada[1].weight.shape, generator=g)


@pytest.mark.parametrize("cond_mode", ["prefix", "cross", "alternating"])
@pytest.mark.parametrize("norm,qk_norm", [("layer", False), ("rms", True)])
def test_fresh_dit_is_identity_on_residual_path(cond_mode, norm, qk_norm):
    dit = DiT(dim=32, depth=3, heads=4, norm=norm, qk_norm=qk_norm, cond_mode=cond_mode)
    x = torch.randn(2, 7, 32)
    cond = [torch.randn(2, 3, 32), torch.randn(2, 4, 32)] if cond_mode == "alternating" else torch.randn(2, 3, 32)
    out = dit(x, torch.rand(2, 7), cond=cond, context=torch.randn(2, 32))
    torch.testing.assert_close(out, dit.final_norm(x))


def test_prefix_cache_equals_joint_attention_with_mask():
    """prefix mode == one transformer over [cond; x] where cond tokens (level 0) cannot see x."""
    torch.manual_seed(0)
    dit = DiT(dim=32, depth=3, heads=4, cond_mode="prefix")
    _randomize_zero_inits(dit)
    B, M, N = 2, 3, 5
    cond, x, level = torch.randn(B, M, 32), torch.randn(B, N, 32), torch.rand(B, N)
    ctx = torch.randn(B, 32)
    cached = dit(x, level, cache=dit.encode_condition(cond, ctx))

    h = torch.cat([cond, x], dim=1)
    lv = torch.cat([torch.zeros(B, M), level], dim=1)
    emb = dit.level_emb(lv)
    c = emb + ctx[:, None]
    mask = torch.ones(M + N, M + N, dtype=torch.bool)
    mask[:M, M:] = False  # condition tokens attend only to condition tokens
    for block in dit.blocks:
        h, _ = block(h, c, emb, mask=mask)
    shift, scale = dit.final_ada(c).chunk(2, dim=-1)
    joint = modulate(dit.final_norm(h), shift, scale)[:, M:]
    torch.testing.assert_close(cached, joint, atol=1e-5, rtol=1e-5)


def test_per_token_levels_change_only_their_tokens_modulation():
    torch.manual_seed(1)
    dit = DiT(dim=32, depth=2, heads=4)
    _randomize_zero_inits(dit)
    x, cond = torch.randn(1, 4, 32), torch.randn(1, 2, 32)
    a = dit(x, torch.tensor([[0.2, 0.2, 0.2, 0.2]]), cond=cond)
    b = dit(x, torch.tensor([[0.2, 0.2, 0.2, 0.9]]), cond=cond)
    assert not torch.allclose(a, b)
    # uniform levels take a broadcast fast path; it must equal the per-token path
    c = dit(x, torch.tensor([[0.2, 0.2, 0.2, 0.2 + 1e-7]]), cond=cond)
    torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-4)


def test_cross_and_alternating_use_their_groups():
    torch.manual_seed(2)
    dit = DiT(dim=32, depth=2, heads=4, cond_mode="alternating")
    _randomize_zero_inits(dit)
    x, lv = torch.randn(1, 3, 32), torch.rand(1, 3)
    lang, img = torch.randn(1, 2, 32), torch.randn(1, 5, 32)
    base = dit(x, lv, cond=[lang, img])
    assert not torch.allclose(base, dit(x, lv, cond=[lang, torch.randn(1, 5, 32)]))  # odd layers see images
    assert not torch.allclose(base, dit(x, lv, cond=[torch.randn(1, 2, 32), img]))  # even layers see language
    with pytest.raises(ValueError, match="alternating"):
        dit(x, lv, cond=lang)


def test_bad_shapes_and_options():
    dit = DiT(dim=32, depth=1, heads=4)
    with pytest.raises(ValueError, match=r"level must be \[B, N\]"):
        dit(torch.randn(2, 3, 32), torch.rand(2, 4))
    with pytest.raises(ValueError, match="cond_mode must be one of"):
        DiT(dim=32, depth=1, heads=4, cond_mode="concat")
    with pytest.raises(ValueError, match="norm must be one of"):
        DiT(dim=32, depth=1, heads=4, norm="batch")
    with pytest.raises(ValueError, match="level_cond must be one of"):
        DiT(dim=32, depth=1, heads=4, level_cond="concat")


@pytest.mark.parametrize("level_cond,level_token", [("adaln", False), ("add", True), ("add", False)])
def test_prepared_level_terms_equal_direct_computation(level_cond, level_token):
    torch.manual_seed(3)
    for context in (None, torch.randn(2, 32)):
        dit = DiT(dim=32, depth=2, heads=4, level_cond=level_cond, level_token=level_token)
        _randomize_zero_inits(dit)
        x, cond = torch.randn(2, 6, 32), torch.randn(2, 3, 32)
        levels = torch.tensor([1.0, 0.7, 0.3, 0.0])
        direct = [dit(x, torch.full((2, 6), float(v)), cache=dit.encode_condition(cond, context)) for v in levels]
        cache = dit.encode_condition(cond, context)
        dit.prepare_levels(cache, levels)
        assert len(cache.level_terms) == 4
        for v, ref in zip(levels, direct):
            torch.testing.assert_close(dit(x, torch.full((2, 6), float(v)), cache=cache), ref, atol=1e-5, rtol=1e-5)
        # a level that was not prepared falls back to direct computation
        ref = dit(x, torch.full((2, 6), 0.5), cache=dit.encode_condition(cond, context))
        torch.testing.assert_close(dit(x, torch.full((2, 6), 0.5), cache=cache), ref)
        # levels given to encode_condition: level-0 terms for the prefix come from the same batched pass
        joint = dit.encode_condition(cond, context, levels=levels[:3])
        assert 0.0 in joint.level_terms
        for kv_joint, kv_ref in zip(joint.prefix_kv, cache.prefix_kv):
            torch.testing.assert_close(kv_joint, kv_ref, atol=1e-6, rtol=1e-5)
        for v, ref in zip(levels, direct):
            torch.testing.assert_close(dit(x, torch.full((2, 6), float(v)), cache=joint), ref, atol=1e-5, rtol=1e-5)


def test_action_patches_group_consecutive_actions():
    from dp.core import ActionHead, ActionTokenizer

    torch.manual_seed(4)
    tok, head = ActionTokenizer(3, 32, horizon=8, patch=4), ActionHead(32, 3, patch=4)
    torch.nn.init.normal_(head.proj.weight)
    actions = torch.randn(2, 8, 3)
    tokens = tok(actions)
    assert tokens.shape == (2, 2, 32)
    # token j sees exactly actions 4j..4j+3
    bumped = actions.clone()
    bumped[:, 5] += 1.0
    diff = (tok(bumped) - tokens).abs().sum(-1)
    assert diff[:, 0].max() == 0 and diff[:, 1].min() > 0
    # and the head writes token j back to actions 4j..4j+3
    out = head(tokens)
    assert out.shape == (2, 8, 3)
    moved = tokens.clone()
    moved[:, 0] += 1.0
    delta = (head(moved) - out).abs().sum(-1)
    assert delta[:, :4].min() > 0 and delta[:, 4:].max() == 0
    with pytest.raises(ValueError, match="must divide the horizon"):
        ActionTokenizer(3, 32, horizon=8, patch=3)


def test_rms_norm_matches_torch():
    x = 3 * torch.randn(4, 5, 64)
    torch.testing.assert_close(RMSNorm(64)(x), torch.nn.RMSNorm(64, eps=1e-6)(x), atol=1e-5, rtol=1e-5)


def test_level_token_and_added_level_conditioning():
    """MoDE's block: the level embedding is added before attention and prepended as a token;
    the output keeps the input's tokens, and the level reaches every token."""
    torch.manual_seed(0)
    dit = DiT(dim=32, depth=2, heads=4, norm="rms", qk_norm=True, level_cond="add", level_token=True)
    assert all(b.ada is None for b in dit.blocks) and dit.final_ada is None
    x, cond = torch.randn(2, 6, 32), torch.randn(2, 3, 32)
    a = dit(x, torch.full((2, 6), 0.2), cond=cond)
    b = dit(x, torch.full((2, 6), 0.8), cond=cond)
    assert a.shape == x.shape and (a - b).abs().amax(-1).min() > 1e-4
    # per-token levels: the level token takes the first token's level
    mixed = torch.tensor([[0.2] * 3 + [0.8] * 3] * 2)
    assert dit(x, mixed, cond=cond).shape == x.shape
