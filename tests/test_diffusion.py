"""Samplers against a case with a known answer: Gaussian data, exact denoiser."""
import pytest
import torch

from dp.diffusion import PREDICTIONS, GaussianProcess, make_sampler

MU, STD = 0.7, 0.3  # data x0 ~ N(MU, STD^2) per dimension


def exact_x0(process):
    """E[x0 | x_t] for Gaussian data: the Bayes-optimal denoiser."""

    def denoise(x_t, t):
        a, s = process.alpha_sigma(t)
        a, s = a[..., None], s[..., None]
        return MU + a * STD**2 / (a**2 * STD**2 + s**2) * (x_t - a * MU)

    return denoise


SCHEDULE_PRED = [("vp_cosine", "eps"), ("flow", "velocity"), ("edm", "edm")]


@pytest.mark.parametrize("schedule,prediction", SCHEDULE_PRED)
@pytest.mark.parametrize("sampler,steps", [("ddpm", 100), ("ddim", 50), ("dpm_solver_pp", 20), ("euler", 100), ("heun", 40)])
def test_sampler_recovers_gaussian_data(schedule, prediction, sampler, steps):
    process = GaussianProcess(schedule, prediction)
    g = torch.Generator().manual_seed(0)
    x = process.prior((4000, 4, 2), generator=g)
    out = make_sampler(sampler, steps).sample(exact_x0(process), process, x, generator=g)
    assert abs(out.mean().item() - MU) < 0.02, out.mean()
    assert abs(out.std().item() - STD) < 0.03, out.std()


@pytest.mark.parametrize("schedule,prediction", [(s, p) for s in ("vp_cosine", "flow") for p in PREDICTIONS if p != "edm"]
                         + [("edm", "edm")])
def test_targets_invert_to_x0(schedule, prediction):
    process = GaussianProcess(schedule, prediction)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(8, 5, 3, generator=g)
    noise = torch.randn(8, 5, 3, generator=g)
    t = torch.rand(8, 5, generator=g) * 0.9 + 0.05  # per-token levels
    x_t = process.add_noise(x0, noise, t)
    back = process.to_x0(process.target(x0, noise, t), x_t, t)
    torch.testing.assert_close(back, x0, atol=2e-3, rtol=1e-3)


def test_per_token_levels_partial_denoising_is_exact():
    """Tokens start at different levels (as in streaming); DDIM with the exact denoiser
    still lands on the data distribution, and tokens already at level 0 never move."""
    process = GaussianProcess("flow", "velocity")
    g = torch.Generator().manual_seed(2)
    B, N = 4000, 3
    start = torch.tensor([0.0, 0.5, 1.0])
    x0 = MU + STD * torch.randn(B, N, 1, generator=g)
    x = process.add_noise(x0, torch.randn(B, N, 1, generator=g), start.expand(B, N))
    grid = torch.stack([start * (1 - i / 40) for i in range(41)])[:, None, :].expand(-1, B, N)
    out = make_sampler("ddim", 40).sample(exact_x0(process), process, x, levels=grid, generator=g)
    torch.testing.assert_close(out[:, 0], x[:, 0])
    for n in (1, 2):
        assert abs(out[:, n].mean().item() - MU) < 0.02 and abs(out[:, n].std().item() - STD) < 0.02


def test_training_level_distributions():
    g = torch.Generator().manual_seed(3)
    vp = GaussianProcess("vp_cosine", "eps", train_steps=100).sample_level((10000,), generator=g)
    assert set((vp * 100).round().long().unique().tolist()) <= set(range(1, 101))
    flow = GaussianProcess("flow", "velocity").sample_level((10000,), generator=g)
    assert abs(flow.median().item() - 0.5) < 0.03  # logit-normal(0, 1) has median 1/2
    edm = GaussianProcess("edm", "edm")
    sigma = edm.alpha_sigma(edm.sample_level((10000,), generator=g))[1]
    assert abs(sigma.median().item() - 0.5) < 0.03  # log-logistic with loc ln 0.5


def test_bad_process_configs():
    with pytest.raises(ValueError, match="schedule must be one of"):
        GaussianProcess("linear")
    with pytest.raises(ValueError, match="prediction 'edm'"):
        GaussianProcess("vp_cosine", "edm")
    with pytest.raises(ValueError, match="sampler must be one of"):
        make_sampler("plms")
    with pytest.raises(ValueError, match="100 training steps"):
        GaussianProcess("vp_cosine").sampling_levels(101)
