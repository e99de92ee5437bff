"""Streaming sampling (SDP), staggered training levels, and committed-action inpainting."""
import numpy as np
import pytest
import torch

from dp.data import Normalizer
from dp.diffusion import GaussianProcess
from dp.diffusion.streaming import StreamingSampler, StreamLayout, staggered_training_levels
from dp.policies import DiTPolicy
from tests.test_diffusion import MU, STD, exact_x0

SHAPE_META = {"action": [3], "obs": {"state": [5]}}


def _policy(**kw):
    torch.manual_seed(0)
    p = DiTPolicy(SHAPE_META, n_obs_steps=1, dim=32, depth=1, heads=2, action_patch=4, **kw)
    rng = np.random.default_rng(0)
    p.set_normalizer(Normalizer.fit({"action": rng.normal(size=(100, 3)), "state": rng.normal(size=(100, 5))}))
    return p.eval()


def test_layout_rejects_chunks_that_do_not_tile_the_horizon():
    with pytest.raises(ValueError, match="not a multiple of the chunk 8"):
        StreamLayout(horizon=16, start=1, chunk=8)
    with pytest.raises(ValueError, match="split action tokens of 4"):
        StreamLayout(horizon=16, start=1, chunk=5, patch=4)
    layout = StreamLayout(horizon=16, start=0, chunk=4, patch=4)
    assert layout.chunks == 4
    assert layout.chunk_index().tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    with pytest.raises(ValueError, match="n_obs_steps 1"):
        DiTPolicy(SHAPE_META, n_obs_steps=2, action_patch=4, streaming={"train_fraction": 0.8})


def test_staggered_levels_rise_by_chunk_and_mix_with_constant_levels():
    process = GaussianProcess("vp_cosine", "eps")
    layout = StreamLayout(horizon=16, start=1, chunk=5)
    g = torch.Generator().manual_seed(0)
    levels = staggered_training_levels(process, layout, 4000, 1.0, generator=g)
    per_chunk = levels[:, [0, 6, 11]]  # one position per chunk
    assert (per_chunk[:, 1:] >= per_chunk[:, :-1]).all()
    assert per_chunk[:, 0].max() <= 1 / 3 + 0.01 and per_chunk[:, 2].min() > 2 / 3  # rounded up onto k/100
    assert torch.allclose(levels * 100, (levels * 100).round(), atol=1e-4)  # on vp_cosine's training grid
    mixed = staggered_training_levels(process, layout, 4000, 0.8, generator=g)
    constant = (mixed == mixed[:, :1]).all(1).float().mean().item()
    assert 0.15 < constant < 0.25  # the 20% drawn at one level (plus the rare staggered row that is constant)


@pytest.mark.parametrize("schedule,prediction", [("vp_cosine", "eps"), ("flow", "velocity")])
def test_streamed_chunks_have_the_data_distribution(schedule, prediction):
    """With the exact denoiser for Gaussian data, every executed chunk of a long stream is
    distributed like the data, and the buffer leaves each call at the documented levels."""
    process = GaussianProcess(schedule, prediction)
    layout = StreamLayout(horizon=16, start=0, chunk=8)
    sampler = StreamingSampler(steps=40)
    g = torch.Generator().manual_seed(0)
    executed = []
    for _ in range(4):
        buffer = sampler.call(exact_x0(process), process, layout,
                              lambda: process.prior((2000, 16, 2), generator=g), generator=g)
        assert sampler.levels[:, :8].eq(0).all() and torch.allclose(sampler.levels[:, 8:], torch.tensor(0.5))
        executed.append(buffer[:, :8])
    out = torch.cat(executed[1:])  # warm calls
    assert abs(out.mean().item() - MU) < 0.02, out.mean()
    assert abs(out.std().item() - STD) < 0.03, out.std()


def test_streaming_policy_runs_passes_per_call_and_resets():
    policy = _policy(streaming={"train_fraction": 0.8})
    policy.set_sampler("streaming", 4)  # 2 chunks of 8 -> 2 passes per warm call
    calls = {"n": 0}
    policy.dit.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    obs = {"state": torch.randn(2, 1, 5)}
    first = policy.predict_action(obs)
    assert first.shape == (2, 16, 3)
    warm_up = calls["n"]
    calls["n"] = 0
    policy.predict_action(obs)
    assert calls["n"] == 2 and warm_up == 2 + 2  # warm-up: 1 -> (0.5, 1) in 2 passes, then the call's 2
    policy.reset()
    assert policy.sampler.buffer is None
    with pytest.raises(ValueError, match="multiple of the number of chunks"):
        policy.set_sampler("streaming", 3)


def test_streaming_on_a_policy_not_trained_for_it_warns():
    policy = _policy()
    with pytest.warns(UserWarning, match="train_fraction=0.8") as caught:
        policy.set_sampler("streaming", 2)
    assert policy.sampler.name == "streaming" and len(caught) == 1  # a warning, not an error: it still runs


def test_streaming_training_loss_has_per_token_levels():
    policy = _policy(streaming={"train_fraction": 1.0}).train()
    batch = {"obs": {"state": torch.randn(4, 1, 5)}, "action": torch.randn(4, 16, 3)}
    loss = policy.compute_loss(batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="train_fraction must be in"):
        _policy(streaming={"train_fraction": 1.5})
    with pytest.raises(ValueError, match="unknown streaming option"):
        _policy(streaming={"fraction": 0.5})


def test_committed_actions_are_inpainted():
    policy = _policy()
    committed = torch.tensor([[[0.3, -0.2, 0.1], [0.2, 0.0, -0.1]]]).repeat(2, 1, 1)
    out = policy.predict_action({"state": torch.randn(2, 1, 5)}, committed=committed)
    torch.testing.assert_close(out[:, :2], committed, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="committed must be"):
        policy.predict_action({"state": torch.randn(2, 1, 5)}, committed=torch.zeros(2, 2, 4))


def test_mode_streams_through_its_router():
    """MoDE's routed experts read per-token levels; the expert cache stays off for streaming."""
    from tests.test_mode import INSTRUCTIONS, _mode

    policy = _mode(n_obs_steps=1, action_patch=4, streaming={"train_fraction": 0.8})
    policy.set_sampler("streaming", 2)
    obs = {"state": torch.randn(2, 1, 4), "instruction": INSTRUCTIONS[:2]}
    a, b = policy.predict_action(obs), policy.predict_action(obs)
    assert a.shape == b.shape == (2, 8, 2) and torch.isfinite(b).all()
    assert all(not f.step_cache for f in policy.routes.ffns())
    policy.train()
    batch = {"obs": {"state": torch.randn(4, 1, 4), "instruction": INSTRUCTIONS[:2] * 2},
             "action": torch.randn(4, 8, 2)}
    assert torch.isfinite(policy.compute_loss(batch)["loss"])
