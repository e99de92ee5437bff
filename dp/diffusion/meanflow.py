"""MeanFlow (Geng et al., "Mean Flows for One-step Generative Modeling"): one network pass per chunk.

The flow path z_t = (1 - t) x + t eps (t = 1 is noise), instantaneous velocity v = eps - x. The
network predicts the *average* velocity over an interval [r, t],

    u(z_t, r, t) = 1 / (t - r) * integral_r^t v(z_tau, tau) dtau,   so   z_r = z_t - (t - r) u,

and one pass from noise gives data: x = z_1 - u(z_1, 0, 1). The second time input reaches the
core as the span t - r, through its own level embedding (``DiT(span_embedding=True)``).

Training uses the MeanFlow identity u = v - (t - r) du/dt with the total derivative
du/dt = v . d_z u + d_t u, which one forward-mode JVP of the network at (z, t, r) with tangents
(v, 1, 0) gives together with u (``torch.func.jvp``). The target u_tgt = v - (t - r) du/dt is
held fixed (stop-gradient), and each sample's squared error ||u - u_tgt||^2 (summed over its
elements) gets the adaptive weight 1 / (||.||^2 + c)^p, also held fixed (p 1, c 1e-3: the
paper's best setting).

Levels: t is the larger of two logit-normal(mu -0.4, sigma 1) draws (``sample_level``); r given
t is the smaller one, i.e. a logit-normal draw truncated to [0, t], drawn by inverse CDF per
token (so per-token levels, as streaming trains with, keep r <= t token by token). A share
``equal_fraction`` of samples has r = t, plain flow matching (the paper's ablation: 75%).
MeanAudio's instantaneous-to-mean curriculum: for the first ``curriculum_steps`` training steps
every sample has r = t (``begin_step``), then the mix starts.

Sampling: ``MeanFlowSampler`` (dp/diffusion/samplers.py, ``sampler=meanflow``, 1 or 2 steps) walks the grid
1 = t_0 > ... > t_S = 0 with z_{t_{i+1}} = z_{t_i} - (t_i - t_{i+1}) u(z, t_{i+1}, t_i). It is DDIM on
the flow path with the step's end passed to the network: with x0_hat = z - t u(z, s, t), DDIM's
(1 - s) x0_hat + s eps_hat is exactly z - (t - s) u. Samplers pass the step's end level to
``denoise`` whenever the process says ``interval_network``; streaming's passes do the same.
No x0 clipping by default: z - t u(z, s, t) is not a data estimate when s > 0, and clipping it
would move the step off z - (t - s) u.
"""
from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from dp.diffusion.process import GaussianProcess, _bcast
from dp.errors import ConfigError


class MeanFlowProcess(GaussianProcess):
    kind = "meanflow"
    interval_network = True  # the network takes the step's end level (as the span t - r)

    def __init__(self, equal_fraction: float = 0.75, mu: float = -0.4, sigma: float = 1.0, adaptive_p: float = 1.0,
                 adaptive_c: float = 1e-3, curriculum_steps: int = 0, clip_x0: float | None = None):
        if not 0 <= equal_fraction <= 1:
            raise ConfigError(f"meanflow.equal_fraction must be in [0, 1] (the paper: 0.75), got {equal_fraction}.")
        if sigma <= 0 or adaptive_c <= 0 or adaptive_p < 0 or curriculum_steps < 0:
            raise ConfigError("meanflow needs sigma > 0, adaptive_c > 0, adaptive_p >= 0 and curriculum_steps >= 0; "
                              f"got sigma {sigma}, adaptive_c {adaptive_c}, adaptive_p {adaptive_p}, "
                              f"curriculum_steps {curriculum_steps}.")
        super().__init__(schedule="flow", prediction="velocity", clip_x0=clip_x0)
        self.equal_fraction, self.mu, self.sigma = float(equal_fraction), float(mu), float(sigma)
        self.adaptive_p, self.adaptive_c, self.curriculum_steps = float(adaptive_p), float(adaptive_c), int(curriculum_steps)
        self.step = 0  # the training step (``begin_step``), for the curriculum

    def begin_step(self, step: int) -> None:
        self.step = int(step)

    # ------------------------------------------------------------------ training
    def _logit_normal(self, shape, device, generator):
        return torch.sigmoid(self.mu + self.sigma * torch.randn(shape, device=device, generator=generator))

    def sample_level(self, shape, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """t: the larger of two logit-normal draws."""
        return torch.maximum(self._logit_normal(shape, device, generator), self._logit_normal(shape, device, generator))

    def sample_start(self, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """r <= t per element: a logit-normal draw truncated to [0, t] (inverse CDF), and r = t for
        a share ``equal_fraction`` of samples (all of them during the curriculum)."""
        normal = torch.distributions.Normal(0.0, 1.0)
        logit_t = torch.logit(t.clamp(1e-6, 1 - 1e-6))
        cdf_t = normal.cdf((logit_t - self.mu) / self.sigma)
        u = torch.rand(t.shape, device=t.device, generator=generator) * cdf_t
        r = torch.sigmoid(self.mu + self.sigma * normal.icdf(u.clamp(1e-7, 1 - 1e-7)))
        r = torch.minimum(r, t)
        share = 1.0 if self.step < self.curriculum_steps else self.equal_fraction
        equal = torch.rand(t.shape[0], *([1] * (t.dim() - 1)), device=t.device, generator=generator) < share
        return torch.where(equal, t, r)

    def training_loss(self, network, x0: torch.Tensor, level: torch.Tensor,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """network(z, t, span) -> u, all per token; x0 [B, N, ...], level t [B, N] -> the loss."""
        t = level.contiguous()  # a dual tensor cannot be an expanded view
        r = self.sample_start(t, generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        tb = _bcast(t, x0)
        z = (1 - tb) * x0 + tb * noise
        v = noise - x0
        with sdpa_kernel(SDPBackend.MATH):  # the fused CPU/flash kernels have no forward-mode derivative
            u, dudt = torch.func.jvp(lambda z_, t_, r_: network(z_, t_, t_ - r_), (z, t, r),
                                     (v, torch.ones_like(t), torch.zeros_like(r)))
        target = (v - _bcast(t - r, x0) * dudt).detach()
        err = (u.float() - target.float()).pow(2).flatten(1).sum(1)  # per sample
        weight = 1.0 / (err.detach() + self.adaptive_c).pow(self.adaptive_p)
        return (weight * err).mean()

    def config(self) -> dict:
        return {"name": "meanflow", **{k: getattr(self, k) for k in (
            "equal_fraction", "mu", "sigma", "adaptive_p", "adaptive_c", "curriculum_steps", "clip_x0")}}


def make_process(config: dict | None, defaults: dict):
    """The process a policy config names: ``{name: meanflow, ...}`` is MeanFlow, anything else a
    ``GaussianProcess`` over ``defaults`` updated with the config."""
    config = dict(config or {})
    if config.pop("name", "gaussian") == "meanflow":
        allowed = ("equal_fraction", "mu", "sigma", "adaptive_p", "adaptive_c", "curriculum_steps", "clip_x0")
        unknown = sorted(set(config) - set(allowed))
        if unknown:
            raise ConfigError(f"process meanflow takes {list(allowed)}; got {unknown} too (its path is fixed: flow, "
                              "average velocity). Use policy=meanflow, whose process section has only these keys.")
        return MeanFlowProcess(**config)
    return GaussianProcess(**{**defaults, **config})
