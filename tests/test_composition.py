"""The denoising policy is a composition: any sampler object runs through ``generate(ctx)``,
a sampler must support the process's kind, and committed actions reach every sampler."""
import numpy as np
import pytest
import torch

from dp.data import Normalizer
from dp.diffusion.protocol import Process, check_pairing
from dp.diffusion.samplers import DDIM
from dp.policies import DiTPolicy

META = {"action": [2], "obs": {"state": [4]}}


def _policy(**kw):
    torch.manual_seed(0)
    policy = DiTPolicy(META, dim=32, depth=1, heads=2, horizon=8, n_obs_steps=1, n_action_steps=4, **kw)
    rng = np.random.default_rng(0)
    policy.set_normalizer(Normalizer.fit({"action": rng.normal(size=(100, 2)), "state": rng.normal(size=(100, 4))}))
    return policy.eval()


class OneStep:
    """A sampler dp does not know by name: one x0 estimate from the prior."""

    name, steps, process_kinds, fixed_levels = "one_step", 1, ("gaussian",), False

    def check(self, policy):
        pass

    def reset(self):
        pass

    def generate(self, ctx):
        x = ctx.prior()
        return ctx.denoise(x, torch.ones(x.shape[:2]))


def test_any_sampler_object_runs_through_generate():
    policy = _policy()
    policy.sampler = policy._checked(OneStep())
    obs = {"state": torch.zeros(2, 1, 4)}
    policy.generator = torch.Generator().manual_seed(0)
    chunk = policy.predict_action(obs)
    # what one denoising call from the same prior gives, by hand
    policy.generator = torch.Generator().manual_seed(0)
    x = policy.prior_sample(2)
    cache = policy.encode_obs(policy.normalize_obs(obs))
    x0 = policy.process.to_x0(policy.network(x, torch.ones(2, 8), cache), x, torch.ones(2, 8))
    torch.testing.assert_close(chunk, policy.normalizer.unnormalize("action", x0))


def test_a_sampler_must_support_the_process_kind():
    policy = _policy()
    assert isinstance(policy.process, Process)
    policy.process.kind = "masked"  # a process of another family
    with pytest.raises(ValueError, match=r"sampler 'ddim' runs \['gaussian'\] processes; this policy's process "
                                         r"is 'masked'"):
        policy.set_sampler("ddim", 10)
    with pytest.raises(ValueError, match="runs"):
        check_pairing(DDIM(10), policy.process)


@pytest.mark.parametrize("sampler", [("ddim", 10), ("dpm_solver_pp", 4), ("streaming", 2)])
def test_committed_actions_hold_under_every_sampler(sampler):
    policy = _policy(streaming={"train_fraction": 0.8})
    policy.set_sampler(*sampler)
    committed = torch.tensor([[[0.3, -0.2], [0.1, 0.4]]])
    chunk = policy.predict_action({"state": torch.zeros(1, 1, 4)}, committed=committed)
    torch.testing.assert_close(chunk[:, :2], committed, rtol=1e-4, atol=1e-4)  # positions To-1 = 0 onward


@pytest.mark.parametrize("cond_mode", ["prefix", "alternating"])
def test_sequence_tokens_keep_instruction_padding_out(cond_mode):
    """obs_tokens=sequence: a token per word, per (step, key), per image patch, two cameras; a short
    instruction padded in a batch beside a long one predicts what it predicts alone."""
    texts = ["push", "open the top drawer on the left"]
    meta = {"action": [2], "obs": {"state": [4], "image": [2, 3, 16, 16]}, "instructions": texts}
    torch.manual_seed(0)
    policy = DiTPolicy(meta, dim=32, depth=2, heads=2, horizon=8, n_obs_steps=1, n_action_steps=4,
                       cond_mode=cond_mode, obs_tokens="sequence", language={"encoder": "builtin", "layers": 1},
                       image_encoder={"crop": 16, "width": 8, "stages": 2, "tokens_per_image": 4})
    rng = np.random.default_rng(0)
    policy.set_normalizer(Normalizer.fit({"action": rng.normal(size=(100, 2)), "state": rng.normal(size=(100, 4))}))
    with torch.no_grad():  # past the zero initialisation, so that conditions change the output
        for p in policy.parameters():
            p.add_(0.2 * torch.randn_like(p))
    policy.eval()
    obs = {"state": torch.randn(2, 1, 4), "image": torch.randint(0, 255, (2, 1, 2, 3, 16, 16), dtype=torch.uint8)}

    def predict(rows, instructions):
        policy.generator = torch.Generator().manual_seed(0)
        return policy.predict_action({**{k: v[rows] for k, v in obs.items()}, "instruction": instructions})

    alone = predict(slice(0, 1), texts[:1])
    batch = predict(slice(0, 2), texts)
    torch.testing.assert_close(batch[:1], alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(predict(slice(0, 2), [texts[0], texts[0]])[1], batch[1])  # the words matter
    loss = policy.train().compute_loss({"obs": {**obs, "instruction": texts}, "action": torch.randn(2, 8, 2)})["loss"]
    loss.backward()
    assert policy.obs_encoder.language.encoder.embed.weight.grad.abs().sum() > 0
