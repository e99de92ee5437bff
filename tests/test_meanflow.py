"""MeanFlow: the JVP target, the (r, t) draw, one- and two-step sampling, streaming, learning."""
import numpy as np
import pytest
import torch

from dp.data import Normalizer
from dp.diffusion.meanflow import MeanFlowProcess
from dp.errors import ConfigError
from dp.policies.dit import DiTPolicy

META = {"action": [2], "obs": {"state": [4]}}


def _policy(**kw):
    kw.setdefault("sampler", {"name": "meanflow", "steps": 1})
    kw.setdefault("process", {"name": "meanflow"})
    policy = DiTPolicy(META, dim=32, depth=2, heads=2, **kw)
    rng = np.random.default_rng(0)
    policy.set_normalizer(Normalizer.fit({"action": rng.uniform(-1, 1, (200, 2)), "state": rng.normal(size=(200, 4))}))
    return policy


def test_the_jvp_is_the_total_derivative_along_the_flow():
    policy = _policy().double()
    for p in policy.parameters():  # adaLN-Zero leaves a fresh network constant in (z, t): give it some slope
        if not p.any():
            torch.nn.init.normal_(p, std=0.1)
    cache = policy.encode_obs({"state": torch.randn(3, 2, 4, dtype=torch.float64)})  # already normalized
    net = lambda z, t, r: policy.network(z, t, cache, t - r)  # noqa: E731
    z, v = torch.randn(3, 16, 2, dtype=torch.float64), torch.randn(3, 16, 2, dtype=torch.float64)
    t, r = torch.full((3, 16), 0.7, dtype=torch.float64), torch.full((3, 16), 0.2, dtype=torch.float64)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        _, dudt = torch.func.jvp(net, (z, t, r), (v, torch.ones_like(t), torch.zeros_like(r)))
    eps = 1e-6
    fd = (net(z + eps * v, t + eps, r) - net(z - eps * v, t - eps, r)) / (2 * eps)
    torch.testing.assert_close(dudt, fd, atol=1e-6, rtol=1e-4)
    assert dudt.abs().max() > 1e-3


def test_interval_draws_and_the_curriculum():
    process = MeanFlowProcess(equal_fraction=0.75, curriculum_steps=100)
    gen = torch.Generator().manual_seed(0)
    t = process.sample_level((4000, 3), generator=gen)
    process.begin_step(0)
    assert torch.equal(process.sample_start(t, gen), t)  # curriculum: r = t (plain flow matching)
    process.begin_step(100)
    r = process.sample_start(t, gen)
    assert (r <= t).all() and (r >= 0).all()
    equal = (r == t).all(1).float().mean().item()  # per sample
    assert 0.72 < equal < 0.78
    # t is the larger of two logit-normal(-0.4, 1) draws: its median is above the single draw's
    assert t.median() > torch.sigmoid(torch.tensor(-0.4))
    with pytest.raises(ConfigError, match="equal_fraction"):
        MeanFlowProcess(equal_fraction=1.5)


@pytest.mark.parametrize("steps,expected", [(1, [(1.0, 1.0)]), (2, [(1.0, 0.5), (0.5, 0.5)])])
def test_each_step_asks_for_the_mean_velocity_over_its_own_interval(steps, expected):
    policy = _policy(sampler={"name": "meanflow", "steps": steps}).eval()
    seen, network = [], policy.network
    policy.network = lambda x_t, level, cache, span=None: (seen.append((float(level[0, 0]), float(span[0, 0]))),
                                                           network(x_t, level, cache, span))[1]
    policy.predict_action({"state": torch.randn(2, 2, 4)})
    assert seen == expected


def test_streaming_passes_each_token_its_own_interval():
    policy = _policy(n_obs_steps=1, sampler={"name": "streaming", "steps": 2, "base": "meanflow"},
                     streaming={"train_fraction": 0.8}).eval()
    spans, network = [], policy.network
    policy.network = lambda x_t, level, cache, span=None: (spans.append((level.clone(), span.clone())),
                                                           network(x_t, level, cache, span))[1]
    obs = {"state": torch.randn(1, 1, 4)}
    policy.predict_action(obs)
    spans.clear()
    policy.predict_action(obs)  # a warm call: chunk 0 from 1/2 to 0, chunk 1 from 1 to 1/2
    (level, span), = spans
    assert level[0, 0] == 0.5 and level[0, -1] == 1.0
    torch.testing.assert_close(span, torch.full_like(span, 0.5))
    assert policy.compute_loss({"obs": {"state": torch.randn(8, 1, 4)}, "action": torch.rand(8, 16, 2)})["loss"] > 0


def test_meanflow_pairs_only_with_its_samplers():
    with pytest.raises(ConfigError, match="meanflow"):
        _policy(sampler={"name": "ddim", "steps": 10})
    with pytest.raises(ConfigError, match="gaussian"):
        DiTPolicy(META, dim=32, depth=2, heads=2, sampler={"name": "meanflow", "steps": 1})


def test_one_step_meanflow_learns_a_deterministic_chunk():
    """Actions are a fixed function of the state; after training, one pass (and two) recover them
    far better than the untrained network does."""
    torch.manual_seed(0)
    policy = _policy(process={"name": "meanflow", "equal_fraction": 0.5})
    w = torch.randn(4, 2)

    def batch(n):
        s = torch.randn(n, 2, 4)
        return {"obs": {"state": s}, "action": torch.tanh(s[:, -1] @ w)[:, None].expand(n, 16, 2).contiguous()}

    test = batch(64)

    def error(steps):
        policy.eval().set_sampler("meanflow", steps)
        return (policy.predict_action(test["obs"]) - test["action"]).pow(2).mean().item()

    before = error(1)
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 300)
    for _ in range(300):
        policy.train()
        loss = policy.compute_loss(batch(64))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    assert error(1) < 0.3 * before and error(2) < 0.1 * before


def test_the_trainer_drives_the_curriculum_and_a_dit_config_cannot_half_switch(tmp_path):
    from train_helpers import TINY_DIT, toy_dataset, train_cfg

    from dp.train.trainer import Trainer

    data = toy_dataset(tmp_path, n_episodes=4)
    trainer = Trainer(train_cfg(data, tmp_path / "run", "policy=meanflow", *TINY_DIT, "training.steps=3",
                                "policy.process.curriculum_steps=2"))
    trainer.run()
    assert trainer.policy.process.step == 2  # the last step ran with the step index 2: past the curriculum
    with pytest.raises(ConfigError, match="policy=meanflow"):
        Trainer(train_cfg(data, tmp_path / "run2", "policy=dit", "+policy.process.name=meanflow", *TINY_DIT))
