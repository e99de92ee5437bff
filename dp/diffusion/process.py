"""Gaussian noise processes: x_t = alpha(t) x0 + sigma(t) eps, with t the level in [0, 1].

Schedules:
- ``vp_cosine``: DDPM's squaredcos_cap_v2 with ``train_steps`` (100) discrete steps;
  diffusers' timestep i is level (i+1)/train_steps; between grid points log(abar) is
  interpolated linearly. Training levels are drawn from the grid, as DDPM does.
- ``flow``: rectified flow, alpha = 1 - t, sigma = t; training t ~ logit-normal.
- ``edm``: variance exploding (alpha = 1) with log sigma linear in t between
  sigma_min and sigma_max (so an even t grid is EDM's exponential sigma schedule);
  training sigma ~ log-logistic (MoDE: loc ln 0.5, scale 0.5).

``GaussianProcess`` implements the ``Process`` protocol (dp/diffusion/protocol.py): ``corrupt``,
``loss`` (per token, with a mask), ``prior``, ``to_x0``; its ``kind`` is ``"gaussian"``.

Predictions (what the network outputs): ``eps``, ``x0``, ``v`` (alpha eps - sigma x0),
``velocity`` (dx_t/dt = alpha' x0 + sigma' eps), and ``edm`` (EDM preconditioning:
D = c_skip x_t + c_out F(c_in x_t), trained on F's effective target; schedule ``edm`` only).
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from dp.errors import ConfigError

SCHEDULES = ("vp_cosine", "flow", "edm")
PREDICTIONS = ("eps", "x0", "v", "velocity", "edm")
_FD = 1e-4  # finite-difference step for alpha'(t), sigma'(t)


def _bcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Levels [B] or [B, N] -> broadcastable against x [B, N, ...]."""
    while t.dim() < x.dim():
        t = t[..., None]
    return t


class GaussianProcess:
    kind = "gaussian"

    def __init__(
        self,
        schedule: str = "vp_cosine",
        prediction: str = "eps",
        train_steps: int = 100,
        sigma_min: float = 0.001,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        edm_loc: float = math.log(0.5),
        edm_scale: float = 0.5,
        clip_x0: float | None = None,
    ):
        if schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES}, got {schedule!r}.")
        if prediction not in PREDICTIONS:
            raise ConfigError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}.")
        if (prediction == "edm") != (schedule == "edm"):
            raise ConfigError(
                f"prediction 'edm' (preconditioned) goes with schedule 'edm' and only with it; got "
                f"schedule={schedule!r}, prediction={prediction!r}."
            )
        if schedule == "vp_cosine" and train_steps < 2:
            raise ConfigError(f"train_steps must be >= 2 for vp_cosine, got {train_steps}.")
        self.schedule, self.prediction = schedule, prediction
        self.train_steps = train_steps
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data
        self.edm_loc, self.edm_scale = edm_loc, edm_scale
        self.clip_x0 = clip_x0
        self._remembered: dict | None = None
        if schedule == "vp_cosine":
            self._log_abar = self._cosine_log_abar(train_steps)  # [K+1], index k <-> level k/K

    @staticmethod
    def _cosine_log_abar(K: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
        f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        betas = torch.tensor([min(1 - f((i + 1) / K) / f(i / K), max_beta) for i in range(K)], dtype=torch.float64)
        return torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(torch.log1p(-betas), 0)])

    # ------------------------------------------------------------------ alpha, sigma
    @contextmanager
    def remember_levels(self, levels, alphas, sigmas):
        """Within the block, ``alpha_sigma(t)`` for t one of the tensor objects in ``levels``
        returns the given alpha and sigma without recomputing them. A sampler computes its whole
        grid in one call; at batch 1 the ~20 small ops per lookup were an eighth of a
        ``predict_action``. Keyed by object identity (the tensors are held, so no id is reused)."""
        saved = self._remembered
        self._remembered = {id(t): (t, a, s) for t, a, s in zip(levels, alphas, sigmas)}
        try:
            yield
        finally:
            self._remembered = saved

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hit = self._remembered.get(id(t)) if self._remembered else None
        if hit is not None and hit[0] is t:
            return hit[1], hit[2]
        t = t.clamp(0.0, 1.0)
        if self.schedule == "vp_cosine":
            pos = t.double() * self.train_steps
            lo = pos.floor().clamp(max=self.train_steps - 1).long()
            w = pos - lo
            la = self._log_abar.to(t.device)
            log_abar = (1 - w) * la[lo] + w * la[lo + 1]
            abar = log_abar.exp()
            return abar.sqrt().to(t.dtype), (1 - abar).clamp_min(0).sqrt().to(t.dtype)
        if self.schedule == "flow":
            return 1 - t, t
        return torch.ones_like(t), self.edm_sigma(t)

    def edm_sigma(self, t: torch.Tensor) -> torch.Tensor:
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        return torch.exp(lo + t * (hi - lo))

    def edm_level(self, sigma: torch.Tensor) -> torch.Tensor:
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        return ((sigma.log() - lo) / (hi - lo)).clamp(0.0, 1.0)

    def d_alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha'(t), sigma'(t)) by central differences (one-sided at the ends)."""
        a = (t - _FD).clamp(0.0, 1.0)
        b = (t + _FD).clamp(0.0, 1.0)
        (aa, sa), (ab, sb) = self.alpha_sigma(a), self.alpha_sigma(b)
        return (ab - aa) / (b - a), (sb - sa) / (b - a)

    # ------------------------------------------------------------------ training
    def sample_level(self, shape, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training levels of ``shape`` drawn from this schedule's training distribution."""
        if self.schedule == "vp_cosine":
            k = torch.randint(1, self.train_steps + 1, shape, device=device, generator=generator)
            return k.float() / self.train_steps
        u = torch.randn(shape, device=device, generator=generator)
        if self.schedule == "flow":
            return torch.sigmoid(u)  # logit-normal(0, 1)
        # log-logistic sigma: log sigma = loc + scale * logit(U), clipped to [sigma_min, sigma_max]
        v = torch.rand(shape, device=device, generator=generator).clamp(1e-6, 1 - 1e-6)
        log_sigma = self.edm_loc + self.edm_scale * (v.log() - (-v).log1p())
        return self.edm_level(log_sigma.exp().clamp(self.sigma_min, self.sigma_max))

    def corrupt(self, x0: torch.Tensor, level: torch.Tensor, generator: torch.Generator | None = None):
        """Clean x0 [B, N, ...] at per-token levels [B, N] -> (x_t, noise): the noise is what
        ``loss`` needs besides x0."""
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        return self.add_noise(x0, noise, level), noise

    def loss(self, out: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, level: torch.Tensor,
             mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean squared error of the network output against this prediction's target, per
        token [B, N] (mean over the feature axes), averaged over the tokens where ``mask`` [B, N]
        is True (all tokens when None)."""
        per_token = (out.float() - self.target(x0, noise, level)).pow(2).flatten(2).mean(-1)
        if mask is None:
            return per_token.mean()
        mask = mask.to(per_token.dtype)
        return (per_token * mask).sum() / mask.sum().clamp_min(1.0)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.alpha_sigma(t)
        return _bcast(alpha, x0) * x0 + _bcast(sigma, x0) * noise

    def model_level(self, x_t: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """The per-token level the core sees: the noise level itself."""
        return level

    def model_input(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network sees: x_t, scaled by EDM's c_in under ``edm`` prediction."""
        if self.prediction != "edm":
            return x_t
        sigma = _bcast(self.alpha_sigma(t)[1], x_t)
        return x_t / (sigma**2 + self.sigma_data**2).sqrt()

    def _edm_coeffs(self, t, x):
        sigma = _bcast(self.alpha_sigma(t)[1], x)
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        return c_skip, c_out

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The regression target for the network at (x0, noise, t)."""
        alpha, sigma = (_bcast(v, x0) for v in self.alpha_sigma(t))
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        if self.prediction == "v":
            return alpha * noise - sigma * x0
        if self.prediction == "velocity":
            da, ds = (_bcast(v, x0) for v in self.d_alpha_sigma(t))
            return da * x0 + ds * noise
        c_skip, c_out = self._edm_coeffs(t, x0)
        return (x0 - c_skip * (alpha * x0 + sigma * noise)) / c_out

    # ------------------------------------------------------------------ inference
    def to_x0(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network's output at (x_t, t) -> its estimate of the clean sample."""
        alpha, sigma = (_bcast(v, x_t) for v in self.alpha_sigma(t))
        if self.prediction == "eps":
            x0 = (x_t - sigma * pred) / alpha.clamp_min(1e-8)
        elif self.prediction == "x0":
            x0 = pred
        elif self.prediction == "v":
            x0 = (alpha * x_t - sigma * pred) / (alpha**2 + sigma**2)
        elif self.prediction == "velocity":
            da, ds = (_bcast(v, x_t) for v in self.d_alpha_sigma(t))
            x0 = (ds * x_t - sigma * pred) / (ds * alpha - sigma * da)
        else:
            c_skip, c_out = self._edm_coeffs(t, x_t)
            x0 = c_skip * x_t + c_out * pred
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
        return x0

    def to_eps(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = (_bcast(v, x_t) for v in self.alpha_sigma(t))
        return (x_t - alpha * x0) / sigma.clamp_min(1e-8)

    def prior(self, shape, device=None, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
        """A sample of x at level 1 (pure noise at this schedule's scale)."""
        return self.prior_scale() * torch.randn(shape, device=device, generator=generator, dtype=dtype)

    def prior_scale(self) -> float:
        """sigma at level 1: the prior is this times a standard normal."""
        return self.alpha_sigma(torch.ones((), dtype=torch.float32))[1].item()

    def sampling_levels(self, steps: int, device=None) -> torch.Tensor:
        """Descending grid [steps + 1] from 1 to 0 for a sampler with ``steps`` network calls.

        vp_cosine: evenly spaced ("trailing") points of the training grid; flow: uniform;
        edm: uniform in t, which is log-uniform (exponential) in sigma.
        """
        if steps < 1:
            raise ConfigError(f"sampler steps must be >= 1, got {steps}.")
        if self.schedule == "vp_cosine":
            if steps > self.train_steps:
                raise ConfigError(f"vp_cosine has {self.train_steps} training steps; got {steps} sampler steps.")
            k = torch.round(torch.linspace(self.train_steps, 0, steps + 1, dtype=torch.float64))
            return (k / self.train_steps).float().to(device)
        return torch.linspace(1.0, 0.0, steps + 1, device=device)

    def config(self) -> dict:
        return {k: getattr(self, k) for k in ("schedule", "prediction", "train_steps", "sigma_min", "sigma_max",
                                                "sigma_data", "edm_loc", "edm_scale", "clip_x0")}
