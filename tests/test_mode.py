"""policy=mode (MoDE): expert caching equals the router path, language conditioning, the
balance loss and router statistics, and a tiny config that learns on toy."""
import numpy as np
import pytest
import torch

from dp.core.moe import ExpertBank, ExpertSum, NoiseRoutedMoE, _runs, bank_order, fuse_swiglus
from dp.data import Normalizer
from dp.encoders.language import BuiltinTextEncoder, WordTokenizer, make_language_encoder
from dp.policies import Policy
from dp.policies.mode import MoDEPolicy
from dp.train.trainer import Trainer
from text_helpers import tiny_local_text_model
from train_helpers import TINY_DIT, toy_dataset, train_cfg

INSTRUCTIONS = ["push the puck to the goal", "open the drawer", "press the button from the top"]
META = {"action": [2], "obs": {"state": [4]}, "instructions": INSTRUCTIONS}


def _mode(**kw):
    torch.manual_seed(0)
    moe = {"num_experts": 4, "top_k": kw.pop("top_k", 2), "shared_expert": kw.pop("shared_expert", False)}
    args = dict(dim=32, depth=2, heads=2, horizon=8, n_action_steps=4, moe=moe,
                language={"encoder": "builtin", "layers": 1})
    policy = MoDEPolicy(META, **{**args, **kw})
    rng = np.random.default_rng(0)
    policy.set_normalizer(Normalizer.fit({"action": rng.uniform(-3, 5, (200, 2)), "state": rng.normal(size=(200, 4))}))
    return policy.eval()


def _obs(b=3):
    g = torch.Generator().manual_seed(1)
    return {"state": torch.randn(b, 2, 4, generator=g), "instruction": [INSTRUCTIONS[i % 3] for i in range(b)]}


def _predict(policy, obs, seed=0):
    policy.generator = torch.Generator().manual_seed(seed)
    return policy.predict_action(obs)


def test_fused_experts_equal_the_weighted_sum():
    torch.manual_seed(0)
    moe = NoiseRoutedMoE(16, 24, num_experts=3, top_k=2, shared_expert=True)
    x = torch.randn(5, 16)
    fused = fuse_swiglus([moe.experts[2], moe.experts[0], moe.shared], [0.7, 0.3, 1.0])
    want = 0.7 * moe.experts[2](x) + 0.3 * moe.experts[0](x) + moe.shared(x)
    torch.testing.assert_close(fused(x), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("groups,split", [
    ([(0, 2), (2, 3), (1, 3)], 0),                   # a path: every group is one window
    ([(0, 1), (2, 3), (0, 2), (1, 3)] * 2 + [(1, 3)], 2),  # a cycle: the rarest group is split
    ([(0, 1, 4), (1, 2, 4)], 0),                     # with a shared expert (index 4) in every group
])
def test_bank_order_stores_each_expert_once_and_splits_the_fewest_calls(groups, split):
    num = 1 + max(e for g in groups for e in g)
    order = bank_order(groups, num)
    assert sorted(order) == list(range(num))
    assert sum(len(_runs(order, g)) - 1 for g in groups) == split


def test_a_split_call_equals_the_weighted_sum():
    torch.manual_seed(0)
    moe = NoiseRoutedMoE(16, 24, num_experts=4, top_k=2)
    bank = ExpertBank(list(moe.experts), [0, 1, 2, 3])
    call = bank.fused({3: 0.25, 0: 0.75})  # slots 0 and 3: two runs
    assert isinstance(call, ExpertSum) and len(call.parts) == 2
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        want = 0.25 * moe.experts[3](x) + 0.75 * moe.experts[0](x)
        torch.testing.assert_close(call(x), want, atol=1e-5, rtol=1e-5)


def test_expert_bank_rejects_an_order_that_is_not_a_permutation():
    moe = NoiseRoutedMoE(16, 24, num_experts=3, top_k=2)
    with pytest.raises(ValueError, match="each of the 3 experts once"):
        ExpertBank(list(moe.experts), [0, 1, 1])


def test_cached_calls_share_one_bank_per_layer():
    policy = _mode()
    _predict(policy, _obs())
    for f in policy.routes.ffns():
        calls = [part for c in f.step_cache.values() for part in (c.parts if isinstance(c, ExpertSum) else [c])]
        banks = {fused.w_in.untyped_storage().data_ptr() for fused in calls}
        assert len(banks) == 1  # every call's weights are views of one bank


@pytest.mark.parametrize("sampler,steps,shared", [("ddim", 10, False), ("heun", 4, True), ("dpm_solver_pp", 5, False)])
def test_cached_experts_equal_the_router_path(sampler, steps, shared):
    policy = _mode(shared_expert=shared)
    policy.set_sampler(sampler, steps)
    obs = _obs()
    policy.routes.enabled = False
    plain = _predict(policy, obs)
    assert all(not f.step_cache for f in policy.routes.ffns())
    policy.routes.enabled = True
    cached = _predict(policy, obs)
    ffns = policy.routes.ffns()
    assert all(len(f.step_cache) == policy.sampler.network_calls() + 1 for f in ffns)  # + the prefix pass
    torch.testing.assert_close(cached, plain, atol=1e-5, rtol=0)


def test_cached_path_runs_no_router_and_rebuilds_when_the_sampler_or_weights_change(monkeypatch):
    policy = _mode()
    obs = _obs()
    _predict(policy, obs)  # builds the cache
    routed = {"n": 0}
    for f in policy.routes.ffns():
        orig = f.route
        monkeypatch.setattr(f, "route", lambda e, orig=orig: routed.__setitem__("n", routed["n"] + 1) or orig(e))
    _predict(policy, obs)
    assert routed["n"] == 0
    policy.set_sampler("ddim", 3)  # new step count: new levels, new routes
    _predict(policy, obs)
    assert all(len(f.step_cache) == 4 for f in policy.routes.ffns())
    with torch.no_grad():  # an in-place update (as EMA does) invalidates the fused weights
        for f in policy.routes.ffns():
            for e in f.experts:
                e.down.weight.mul_(1.5)
    cached = _predict(policy, obs)
    policy.routes.enabled = False
    torch.testing.assert_close(cached, _predict(policy, obs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("change", ["level_embedding_in_place", "load_state_dict_assign"])
def test_the_expert_cache_follows_every_weight_change(change):
    policy, other = _mode(), _mode()
    torch.manual_seed(1)
    with torch.no_grad():  # away from the zero-initialised head, so outputs show which experts ran
        for p in [*policy.parameters(), *other.parameters()]:
            p.add_(0.3 * torch.randn_like(p))
    obs = _obs()
    _predict(policy, obs)  # builds the cache
    if change == "level_embedding_in_place":  # the routes are computed from it
        with torch.no_grad():
            torch.manual_seed(2)
            policy.dit.level_emb.mlp[2].bias.add_(5.0 * torch.randn_like(policy.dit.level_emb.mlp[2].bias))
    else:  # new Parameter objects: the watched list must not hold the old ones
        policy.load_state_dict(other.state_dict(), assign=True)
    cached = _predict(policy, obs)
    policy.routes.enabled = False
    torch.testing.assert_close(cached, _predict(policy, obs), atol=1e-5, rtol=0)


def test_language_changes_the_prediction_and_is_required():
    policy = _mode()
    obs = _obs(2)
    with torch.no_grad():
        torch.nn.init.normal_(policy.language.embed.weight)  # a fresh network barely reads its condition
        for blk in policy.dit.blocks:
            torch.nn.init.normal_(blk.attn.proj.weight, std=0.5)
        torch.nn.init.normal_(policy.codec.head.proj.weight, std=0.5)
    a = _predict(policy, {**obs, "instruction": [INSTRUCTIONS[0]] * 2})
    b = _predict(policy, {**obs, "instruction": [INSTRUCTIONS[1]] * 2})
    assert not torch.allclose(a, b)
    with pytest.raises(KeyError, match="instruction"):
        policy.predict_action({"state": obs["state"]})
    with pytest.raises(ValueError, match="3 strings for a batch of 2"):
        policy.predict_action({**obs, "instruction": INSTRUCTIONS})


def test_word_tokenizer_and_unknown_words():
    tok = WordTokenizer(INSTRUCTIONS)
    ids, valid = tok(["Open the DRAWER!", "open the fridge"])
    assert ids.shape == (2, 3) and valid.all()
    assert ids[0].tolist()[:2] == ids[1].tolist()[:2] and ids[1, 2] == 1  # 'fridge' -> <unk>
    enc = BuiltinTextEncoder(INSTRUCTIONS, 16, layers=1)
    assert enc(["open the drawer", "press the button from the top"]).shape == (2, 16)


def test_builtin_encodings_are_cached_at_inference_until_the_weights_change():
    torch.manual_seed(0)
    enc = BuiltinTextEncoder(INSTRUCTIONS, 16, layers=1).eval()
    texts = [INSTRUCTIONS[1], INSTRUCTIONS[0], INSTRUCTIONS[1]]
    with torch.inference_mode():
        first = enc(texts)
        calls = {"n": 0}
        encode = enc.encode
        enc.encode = lambda t: calls.__setitem__("n", calls["n"] + 1) or encode(t)
        torch.testing.assert_close(enc(texts), first)
        assert calls["n"] == 0  # served from the cache
        enc.embed.weight.mul_(2.0)  # an in-place update, as EMA makes
        changed = enc(texts)
    assert calls["n"] == 1 and not torch.allclose(changed, first)
    torch.testing.assert_close(changed, encode(texts))  # equals a fresh encoding, batch composition aside
    assert enc.train()(texts).requires_grad  # training never reads the cache


def test_pretrained_language_encoder_errors_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="downloads nothing"):
        make_language_encoder({"encoder": "pretrained", "path": str(tmp_path / "clip")}, INSTRUCTIONS, 16)
    with pytest.raises(ValueError, match="needs language.path"):
        make_language_encoder({"encoder": "pretrained"}, INSTRUCTIONS, 16)
    with pytest.raises(ValueError, match="builtin"):
        make_language_encoder({"encoder": "clip"}, INSTRUCTIONS, 16)


def test_balance_loss_and_router_stats_in_the_loss():
    policy = _mode().train()
    batch = {"obs": {"state": torch.randn(16, 2, 4)}, "action": torch.rand(16, 8, 2),
             "task_id": torch.arange(16) % 3}
    out = policy.compute_loss(batch)
    assert set(out) >= {"loss", "mse", "balance_loss"}
    assert any(k.startswith("router/usage_b") for k in out) and any(k.startswith("router/entropy_b") for k in out)
    torch.testing.assert_close(out["loss"], out["mse"] + 0.01 * out["balance_loss"])
    out["balance_loss"].backward()
    assert all(f.router.weight.grad.abs().sum() > 0 for f in policy.routes.ffns())


def test_denoiser_active_parameters_are_under_60_percent_at_the_default_shape():
    meta = {"action": [4], "obs": {"state": [39]}, "instructions": INSTRUCTIONS}
    policy = MoDEPolicy(meta, dim=192, depth=4, heads=4, action_patch=4, language={"encoder": "builtin"})
    dit_total = sum(p.numel() for p in policy.dit.parameters())
    per_expert = sum(p.numel() for p in policy.routes.ffns()[0].experts[0].parameters())
    assert policy.active_parameters(policy.dit) == dit_total - 4 * 2 * per_expert  # 2 idle experts x 4 layers
    assert policy.active_parameters(policy.dit) / dit_total <= 0.6
    assert policy.active_parameters() < policy.num_parameters()


def test_tiny_mode_trains_on_toy_and_reloads(tmp_path):
    data = toy_dataset(tmp_path, n_episodes=20)
    cfg = train_cfg(data, tmp_path / "run", "policy=mode", *TINY_DIT, "policy.language.layers=1",
                    "training.steps=100", "training.checkpoint_every=100")
    trainer = Trainer(cfg)
    result = trainer.run()
    losses = trainer.history["loss"]
    assert np.mean(losses[-20:]) < 0.8 * np.mean(losses[:5]), losses
    assert "balance_loss" in trainer.last_metrics
    assert np.isfinite(trainer.val_loss())  # the EMA model in eval mode reads the single-task store's instruction
    policy = Policy.from_checkpoint(result["checkpoint"])
    assert isinstance(policy, MoDEPolicy)
    state_dim = policy.config["shape_meta"]["obs"]["state"][0]
    obs = {"state": torch.zeros(1, 2, state_dim), "instruction": [policy.instructions[0]]}
    assert policy.predict_action(obs).shape[1] == 8


def test_routing_table_and_plot(tmp_path):
    from dp.eval.routing import plot_routing, routing_table

    policy = _mode()
    table = routing_table(policy, n_levels=11)
    assert len(table["layers"]) == 2 and np.asarray(table["layers"][0]["probs"]).shape == (11, 4)
    assert all(0 <= layer["specialisation_tv"] <= 1 for layer in table["layers"])
    assert np.asarray(table["layers"][0]["chosen"]).sum(-1).tolist() == [2] * 11
    assert plot_routing(table, tmp_path / "r.png").stat().st_size > 1000


def test_moe_is_a_dit_option_and_bad_options_are_named():
    from dp.policies import DiTPolicy

    policy = DiTPolicy(META, dim=32, depth=2, heads=2, horizon=8, n_action_steps=4, ffn="moe", moe={"top_k": 1})
    assert len(policy.routes.ffns()) == 2 and policy.routes.ffns()[0].top_k == 1
    with pytest.raises(ValueError, match="ffn must be one of"):
        DiTPolicy(META, dim=32, depth=1, heads=2, ffn="sparse")
    with pytest.raises(ValueError, match="unknown moe option"):
        DiTPolicy(META, dim=32, depth=1, heads=2, ffn="moe", moe={"experts": 8})


def test_swiglu_ffn_has_the_dense_mlps_parameters_and_one_expert_shape():
    from dp.core.layers import MLP, SwiGLU
    from dp.policies import DiTPolicy

    kw = dict(dim=48, depth=2, heads=2, horizon=8, n_action_steps=4)
    gelu, swiglu = DiTPolicy(META, **kw), DiTPolicy(META, ffn="swiglu", **kw)
    mode = DiTPolicy(META, ffn="moe", **kw)
    assert all(isinstance(b.ffn, MLP) for b in gelu.dit.blocks)
    assert all(isinstance(b.ffn, SwiGLU) for b in swiglu.dit.blocks)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(swiglu.dit.blocks[0].ffn) == pytest.approx(count(gelu.dit.blocks[0].ffn), rel=0.01)
    expert = mode.dit.blocks[0].ffn.experts[0]
    assert swiglu.dit.blocks[0].ffn.gate_up.weight.shape == expert.gate_up.weight.shape
    rng = np.random.default_rng(0)
    swiglu.set_normalizer(Normalizer.fit({"action": rng.normal(size=(50, 2)), "state": rng.normal(size=(50, 4))}))
    action = _predict(swiglu.eval(), {"state": _obs()["state"]})
    assert action.shape == (3, 8, 2) and torch.isfinite(action).all()


def test_pretrained_language_encoder_loads_a_local_model_frozen(tmp_path):
    tiny_local_text_model(tmp_path / "text", INSTRUCTIONS)
    enc = make_language_encoder({"encoder": "pretrained", "path": str(tmp_path / "text")}, INSTRUCTIONS, 16)
    out = enc(INSTRUCTIONS[:2])
    assert out.shape == (2, 16) and not torch.allclose(out[0], out[1])
    assert [n for n, _ in enc.named_parameters()] == ["proj.weight", "proj.bias"]  # the text model stays frozen, outside
    out.sum().backward()
    assert enc.proj.weight.grad is not None
    policy = _mode(language={"encoder": "pretrained", "path": str(tmp_path / "text")})
    assert policy.predict_action(_obs(2)).shape == (2, 8, 2)
