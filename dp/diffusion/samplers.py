"""Samplers: walk x from level 1 to level 0 with a denoiser.

Every sampler meets the model only through ``denoise(x_t, t) -> x0_hat`` (the process
turns the raw network output into x0) and works with per-token levels: ``levels`` is
a descending grid [S+1] or [S+1, B, N]; each call sees ``t`` of shape [B, N]. A token
whose level is already 0 is left as it is; a step that ends at level 0 returns x0_hat.

- ``ddpm``: ancestral sampling with the Gaussian posterior q(x_s | x_t, x0_hat).
- ``ddim``: deterministic (eta 0) x_s = alpha_s x0_hat + sigma_s eps_hat.
- ``dpm_solver_pp``: DPM-Solver++(2M), multistep second order in log-SNR.
- ``euler`` / ``heun``: the probability-flow ODE, first / second order (see Euler).
- ``meanflow``: DDIM on a MeanFlow process, whose network also takes the step's end level:
  ``denoise(x_t, t, s)`` whenever ``process.interval_network`` (dp/diffusion/meanflow.py).

A policy drives every sampler the same way, with no branch on its name:

    sampler.check(policy)            # when the sampler is set: can it run this policy? (raises ConfigError)
    x0 = sampler.generate(ctx)       # one prediction; ctx: SampleContext (dp/policies/denoising.py)

``ctx`` gives ``denoise(x_t, level) -> x0_hat`` (committed actions inpainted, cached expert
routes applied), ``process``, ``prior()``, ``generator``, ``layout`` and ``plugin(name)``.
A sampler that keeps state between predictions (streaming's buffer) owns it; one that needs a
trained part (truncated's anchors) asks ``ctx.plugin`` for it. ``fixed_levels``: every
network call's level is known before the prediction (what MoE route caching needs).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from dp.diffusion.process import GaussianProcess, _bcast
from dp.errors import ConfigError

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SamplingPlan:
    """A sampler's grid and what the loop branches on, read to the host once (``Sampler.plan``).

    rows: S + 1 levels [B, N], descending; moving [S, B, N]: the tokens a step moves; ends_all /
    ends_any: per step, whether every / some token ends at level 0; alpha_sigma: both of the grid."""

    rows: tuple[torch.Tensor, ...]
    moving: torch.Tensor
    all_moving: bool
    ends_all: list[bool]
    ends_any: list[bool]
    alpha_sigma: tuple[torch.Tensor, torch.Tensor]


class Sampler:
    name = "base"
    calls_per_step = 1
    process_kinds = ("gaussian",)
    fixed_levels = True
    plannable = True  # a prediction can be planned before it runs (``DenoisingPolicy.plan_prediction``)

    def __init__(self, steps: int = 10):
        if steps < 1:
            raise ConfigError(f"{self.name}: steps must be >= 1, got {steps}.")
        self.steps = int(steps)

    def network_calls(self) -> int:
        return self.steps * self.calls_per_step

    def check(self, policy) -> None:
        """Raise ConfigError when this sampler cannot run ``policy`` (nothing to check here)."""

    def reset(self) -> None:
        """Forget per-episode state (none here)."""

    def generate(self, ctx) -> torch.Tensor:
        """One prediction: the clean sample [B, H, A] from ``ctx.prior()``."""
        return self.sample(ctx.denoise, ctx.process, ctx.prior(), generator=ctx.generator, plan=ctx.plan)

    def levels(self, process: GaussianProcess, device=None) -> torch.Tensor:
        return process.sampling_levels(self.steps, device)

    def call_levels(self, process: GaussianProcess, levels: torch.Tensor | None = None) -> list[float]:
        """The level of each network call of one ``sample`` (over ``levels`` [S + 1], default this
        sampler's grid), in call order. Found by running the sampler on a stand-in denoiser, so it
        holds for every sampler, including those that call the network twice per step."""
        seen: list[float] = []

        def record(x_t: torch.Tensor, t: torch.Tensor, *_) -> torch.Tensor:
            seen.append(float(t.reshape(-1)[0]))
            return torch.zeros_like(x_t)

        self.sample(record, process, torch.zeros(1, 1, 1), levels=levels)
        return seen

    def plan(self, process: GaussianProcess, x_shape, device=None, levels: torch.Tensor | None = None) -> "SamplingPlan":
        """Everything ``sample`` needs to know about its grid, with the host syncs done here, once:
        a prediction that passes the plan to ``sample`` reads no tensor on the host (what a CUDA graph
        capture and ``torch.export`` need). ``x_shape``: [B, N, ...] of the samples."""
        if levels is None:
            levels = self.levels(process, device)
        grid = levels.to(device)
        if grid.dim() == 1:
            grid = grid[:, None, None].expand(-1, *x_shape[:2])
        if tuple(grid.shape[1:]) != tuple(x_shape[:2]):
            raise ValueError(f"levels must be [S+1] or [S+1, B, N] with [B, N] = {tuple(x_shape[:2])}; "
                             f"got {tuple(levels.shape)}.")
        moving = grid[:-1] > grid[1:]  # [S, B, N]; tokens already at their final level stay put
        ends = (grid[1:] <= 0).reshape(grid.shape[0] - 1, -1)
        # alpha and sigma of the whole grid in one batched call, looked up by the steps
        return SamplingPlan(grid.unbind(0), moving, bool(moving.all()), ends.all(1).tolist(), ends.any(1).tolist(),
                            process.alpha_sigma(grid))

    def plan_calls(self, process: GaussianProcess, batch: int, length: int, device=None, first: bool = True,
                   layout=None) -> tuple["SamplingPlan", list]:
        """A whole prediction planned for ``batch`` targets of ``length`` elements (actions, or frames and
        actions): (the plan, each network call's level, a float here). ``first`` and ``layout`` matter to
        streaming only."""
        return self.plan(process, (batch, length), device), self.call_levels(process)

    def sample(self, denoise: Denoise, process: GaussianProcess, x: torch.Tensor,
               levels: torch.Tensor | None = None, generator: torch.Generator | None = None,
               plan: "SamplingPlan | None" = None) -> torch.Tensor:
        """x: the starting sample [B, N, A] at ``levels[0]`` -> the sample at ``levels[-1]``.
        ``plan``: ``self.plan(...)`` made beforehand (then ``levels`` is not read)."""
        if plan is None:
            plan = self.plan(process, x.shape, x.device, levels)
        self.begin()
        rows = plan.rows
        with process.remember_levels(rows, *plan.alpha_sigma):
            interval = getattr(process, "interval_network", False)  # MeanFlow: the network takes the step's end
            for i in range(len(rows) - 1):
                t, s = rows[i], rows[i + 1]
                x0 = denoise(x, t, s) if interval else denoise(x, t)
                stepped = self.step(denoise, process, x, x0, t, s, generator, final=plan.ends_all[i])
                if plan.ends_all[i]:
                    stepped = x0  # a step that ends at level 0 returns x0_hat
                elif plan.ends_any[i]:
                    stepped = torch.where(_bcast(s <= 0, x), x0, stepped)
                x = stepped if plan.all_moving else torch.where(_bcast(plan.moving[i], x), stepped, x)
        return x

    def begin(self) -> None:
        """Reset multistep memory at the start of a trajectory."""

    def step(self, denoise, process, x, x0, t, s, generator, final=False):
        raise NotImplementedError


class DDIM(Sampler):
    name = "ddim"

    def step(self, denoise, process, x, x0, t, s, generator, final=False):
        eps = process.to_eps(x0, x, t)
        a_s, s_s = (_bcast(v, x) for v in process.alpha_sigma(s))
        return a_s * x0 + s_s * eps


class DDPM(Sampler):
    name = "ddpm"

    def step(self, denoise, process, x, x0, t, s, generator, final=False):
        a_t, s_t = (_bcast(v, x) for v in process.alpha_sigma(t))
        a_s, s_s = (_bcast(v, x) for v in process.alpha_sigma(s))
        a_ts = a_t / a_s
        var_ts = (s_t**2 - a_ts**2 * s_s**2).clamp_min(0)
        mean = (a_ts * s_s**2 / s_t**2) * x + (a_s * var_ts / s_t**2) * x0
        std = (var_ts * s_s**2 / s_t**2).sqrt()
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        return mean + std * noise


class DPMSolverPP(Sampler):
    """DPM-Solver++(2M) (Lu et al. 2022), data prediction, first order on the first step."""

    name = "dpm_solver_pp"

    def begin(self) -> None:
        self.prev_x0 = None
        self.prev_h = None

    def step(self, denoise, process, x, x0, t, s, generator, final=False):
        a_t, s_t = (_bcast(v, x) for v in process.alpha_sigma(t))
        a_s, s_s = (_bcast(v, x) for v in process.alpha_sigma(s))
        lam_t = torch.log(a_t / s_t)
        lam_s = torch.log(a_s / s_s.clamp_min(1e-12))
        h = lam_s - lam_t
        d = x0
        if self.prev_x0 is not None:
            r = self.prev_h / h.clamp_min(1e-12)
            second = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * self.prev_x0
            d = torch.where(torch.isfinite(second) & (self.prev_h > 0), second, x0)
        self.prev_x0, self.prev_h = x0, h
        return (s_s / s_t) * x - a_s * torch.expm1(-h) * d


class Euler(Sampler):
    """Euler on the probability-flow ODE, stepping alpha and sigma by their exact increments:
    x_s = x_t + (alpha_s - alpha_t) x0_hat + (sigma_s - sigma_t) eps_hat. This is the usual
    Euler in t for flow (alpha = 1 - t, sigma = t) and EDM's Euler in sigma for ``edm``; under
    vp_cosine it coincides with DDIM."""

    name = "euler"

    @staticmethod
    def increment(process, x, x0, eps, t, s):
        a_t, s_t = (_bcast(v, x) for v in process.alpha_sigma(t))
        a_s, s_s = (_bcast(v, x) for v in process.alpha_sigma(s))
        return (a_s - a_t) * x0 + (s_s - s_t) * eps

    def step(self, denoise, process, x, x0, t, s, generator, final=False):
        return x + self.increment(process, x, x0, process.to_eps(x0, x, t), t, s)


class Heun(Euler):
    """Heun's second-order method (EDM's deterministic sampler): average the slopes at
    both ends of each step; the final step (to level 0) is Euler."""

    name = "heun"
    calls_per_step = 2

    def network_calls(self) -> int:
        return 2 * self.steps - 1

    def step(self, denoise, process, x, x0, t, s, generator, final=False):
        eps = process.to_eps(x0, x, t)
        x_euler = x + self.increment(process, x, x0, eps, t, s)
        if final:  # every token ends at level 0
            return x_euler
        s_safe = s.clamp_min(1e-6)
        x0_s = denoise(x_euler, s_safe)
        eps_s = process.to_eps(x0_s, x_euler, s_safe)
        return x + self.increment(process, x, 0.5 * (x0 + x0_s), 0.5 * (eps + eps_s), t, s)


class MeanFlowSampler(DDIM):
    """MeanFlow's sampler (dp/diffusion/meanflow.py): z <- z - (t - s) u(z, s, t) over ``steps``
    uniform intervals (1 or 2 in the paper); DDIM on the flow path with the step's end passed
    to the network."""

    name = "meanflow"
    process_kinds = ("meanflow",)


SAMPLERS = {cls.name: cls for cls in (DDPM, DDIM, DPMSolverPP, Euler, Heun, MeanFlowSampler)}


def gaussian_sampler(name: str, steps: int = 10) -> Sampler:
    """One of ``SAMPLERS`` by name, no options (dp.diffusion.factory.make_sampler builds every sampler)."""
    if name not in SAMPLERS:
        raise ConfigError(f"sampler must be one of {sorted(SAMPLERS)}, got {name!r}.")
    return SAMPLERS[name](steps)
