"""Discrete Diffusion VLA's parts: the discrete action codec, the masked process and MaskGIT
decoding with remasking, composed into ``policy=ddvla``."""
import math

import numpy as np
import pytest
import torch

from dp.core.codecs import DiscreteActionCodec
from dp.diffusion.masked import MaskedProcess, MaskedSampler
from dp.policies import Policy
from dp.train.trainer import Trainer
from train_helpers import toy_dataset, train_cfg


def test_codec_bins_round_trip_within_half_a_bin_and_reject_bad_input():
    codec = DiscreteActionCodec(action_dim=2, dim=8, horizon=4, bins=64)
    a = torch.stack([torch.linspace(-1, 1, 1000), torch.linspace(0, 5, 1000) ** 2], 1)
    report = codec.fit(a)
    width = (codec.high - codec.low) / 64
    inside = (a >= codec.low) & (a <= codec.high)
    err = (codec.dequantize(codec.quantize(a[:, None])).reshape(-1, 2) - a).abs()
    assert (err[inside.all(1)] <= width / 2 + 1e-6).all()
    assert report["max"][0] >= report["mean"][0] > 0
    ids = codec.quantize(a[:4].reshape(1, 4, 2))
    assert ids.shape == (1, 8) and ids.max() < 64  # step-major: (step 0, dim 0), (step 0, dim 1), ...
    with pytest.raises(ValueError, match="bins must be an integer >= 2"):
        DiscreteActionCodec(2, 8, 4, bins=1)
    with pytest.raises(ValueError, match=r"dimension\(s\) \[1\] have equal 1st and 99th percentiles"):
        codec.fit(torch.stack([torch.linspace(-1, 1, 100), torch.zeros(100)], 1))


def test_masked_process_masks_the_drawn_fraction_and_scores_masked_tokens_only():
    process = MaskedProcess(mask_id=10)
    x0 = torch.randint(0, 10, (4, 20))
    level = torch.tensor([0.05, 0.5, 0.75, 1.0])[:, None].expand(4, 20)
    x_t, masked = process.corrupt(x0, level)
    assert masked.sum(1).tolist() == [1, 10, 15, 20]
    assert (x_t[masked] == 10).all() and (x_t[~masked] == x0[~masked]).all()
    logits = torch.randn(4, 20, 10)
    changed = logits.clone()
    changed[~masked] = torch.randn_like(changed[~masked]) * 100  # unmasked positions do not count
    torch.testing.assert_close(process.loss(logits, x0, masked, level), process.loss(changed, x0, masked, level))
    ratios = process.sample_level((10_000,))
    assert 0 < ratios.min() and ratios.max() <= 1 and abs(ratios.mean() - 2 / math.pi) < 0.02  # E[cos(pi/2 u)]


class _Ctx:
    """A stand-in model for the sampler: fixed log-probabilities per position."""

    def __init__(self, logits, process):
        self.logits, self.process, self.generator, self.calls = logits, process, torch.Generator().manual_seed(0), []

    def prior(self):
        return self.process.prior(self.logits.shape[:2])

    def network(self, x, level):
        self.calls.append(x.clone())
        return self.logits


def test_masked_decoding_is_confidence_ordered_not_left_to_right():
    n, k = 8, 5
    logits = torch.full((1, n, k), -5.0)
    sure = [6, 2, 7]  # positions the model is surest of, not the first ones
    for rank, pos in enumerate(sure):
        logits[0, pos, 1] = 10.0 - rank
    for pos in set(range(n)) - set(sure):
        logits[0, pos] = 0.0  # unsure: uniform
    ctx = _Ctx(logits, MaskedProcess(mask_id=k))
    out = MaskedSampler(steps=4, temperature=0.0).generate(ctx)
    assert (out != k).all() and len(ctx.calls) == 4
    decoded = [set(torch.nonzero(c[0] != k).flatten().tolist()) for c in ctx.calls]  # before each round
    assert [len(d) for d in decoded] == [0, 1, 3, 5]  # n - floor(n cos(pi/2 r/R)) after round r
    assert decoded[1] == {6} and decoded[2] == set(sure)  # surest first, wherever they sit


def test_remasking_revisits_a_decoded_token_the_model_turns_against():
    n, k = 4, 3
    process = MaskedProcess(mask_id=k)

    class Turning(_Ctx):
        def network(self, x, level):  # position 0 looks certain in round 1, then its value looks wrong
            self.calls.append(x.clone())
            out = torch.zeros(1, n, k)
            out[0, :, 0] = 2.0
            out[0, 0, 0] = 9.0 if len(self.calls) == 1 else -9.0
            return out

    for remask, revisited in (("lowest", True), ("none", False)):
        ctx = Turning(None, process)
        ctx.prior = lambda: process.prior((1, n))
        MaskedSampler(steps=3, temperature=0.0, remask=remask).generate(ctx)
        assert (ctx.calls[1][0, 0] != k) and ((ctx.calls[2][0, 0] == k) == revisited), remask


def test_tiny_ddvla_trains_on_toy_and_reloads(tmp_path):
    data = toy_dataset(tmp_path)
    cfg = train_cfg(data, tmp_path / "run", "policy=ddvla", "policy.dim=32", "policy.depth=2", "policy.heads=2",
                    "policy.horizon=8", "policy.n_action_steps=4", "policy.bins=32", "training.steps=40")
    trainer = Trainer(cfg)
    assert max(trainer.policy.codec_report["max"]) < 0.2  # env units: toy actions span about [-1, 1]
    trainer.run()
    policy = Policy.from_checkpoint(tmp_path / "run")
    torch.testing.assert_close(policy.codec.low, trainer.ema.model.codec.low)  # bins travel in the checkpoint
    policy.set_sampler("masked", 4)
    a = policy.predict_action({"state": torch.zeros(2, 2, 4)})
    lo, hi = policy.normalizer.params["action"].min, policy.normalizer.params["action"].max
    assert a.shape == (2, 8, 2) and torch.isfinite(a).all() and (a >= lo - 1e-4).all() and (a <= hi + 1e-4).all()
    with pytest.raises(ValueError, match="sampler 'ddim' runs"):
        policy.set_sampler("ddim", 10)
    with pytest.raises(ValueError, match="committed actions are inpainted into continuous"):
        policy.predict_action({"state": torch.zeros(1, 2, 4)}, committed=np.zeros((1, 2, 2), np.float32))


def test_ar_tokens_decodes_left_to_right_with_a_cache_equal_to_the_full_causal_pass(tmp_path):
    from dp.data import Normalizer
    from dp.policies.ddvla import ARTokensPolicy

    torch.manual_seed(0)
    policy = ARTokensPolicy({"action": [2], "obs": {"state": [4]}}, horizon=4, n_action_steps=2, dim=32, depth=2,
                            heads=2, bins=8)
    rng = np.random.default_rng(0)
    policy.set_normalizer(Normalizer.fit({"action": rng.normal(size=(100, 2)), "state": rng.normal(size=(100, 4))}))
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    policy.eval()
    obs = {"state": torch.randn(3, 2, 4)}
    chunk = policy.predict_action(obs)
    ids = policy.codec.quantize(policy.normalizer.normalize("action", chunk))
    # greedy decoding: every token is the argmax of one full causal pass over the tokens before it
    cache = policy.encode_obs(policy.normalize_obs(obs))
    x_in, _ = policy.process.corrupt(ids, torch.zeros_like(ids, dtype=torch.float32))
    logits = policy.network(x_in, torch.zeros(ids.shape), cache)
    assert torch.equal(logits.argmax(-1), ids)
    loss = policy.train().compute_loss({"obs": obs, "action": chunk})["loss"]
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="sampler 'masked' runs"):
        policy.set_sampler("masked", 4)


def test_resuming_a_ddvla_on_a_dataset_of_another_action_dimension_is_refused(tmp_path):
    """The codec's bins and per-dimension embeddings are sized by the action dimension: a resume
    onto a store with 3-D actions must stop with what differs, not a raw size-mismatch traceback."""
    from dp.checkpoint import CheckpointError
    from dp.data import ReplayBuffer

    data = toy_dataset(tmp_path)
    tiny = ["policy=ddvla", "policy.dim=32", "policy.depth=2", "policy.heads=2", "policy.horizon=8",
            "policy.n_action_steps=4", "policy.bins=16"]
    Trainer(train_cfg(data, tmp_path / "run", *tiny, "training.steps=2", "training.checkpoint_every=2")).run()

    source = ReplayBuffer.open(data)
    wider = ReplayBuffer.create(tmp_path / "wider.zarr")
    wider.attrs.update(dict(source.attrs))
    for i in range(source.n_episodes):
        ep = source.get_episode(i)
        ep["action"] = np.concatenate([ep["action"], ep["action"][:, :1] * 0.5], axis=1)
        wider.add_episode(ep)
    cfg = train_cfg(tmp_path / "wider.zarr", tmp_path / "run", *tiny, "training.steps=4", "resume=true")
    with pytest.raises(CheckpointError, match=r"action: checkpoint \[2\], dataset \[3\].*resume=false"):
        Trainer(cfg)
