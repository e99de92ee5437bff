"""Streaming sampling (Streaming Diffusion Policy, Høeg et al.; TEDi).

The action horizon is a buffer whose noise level rises chunk by chunk. With ``h`` chunks
of ``chunk`` actions and ``steps`` = N levels from noise to clean, each call (one control
step that executes one chunk):

    levels at entry   chunk i at (i + 1) / h          (chunk 0 at 1/h, the top one at 1)
    N / h passes      every chunk drops by 1/h        -> chunk 0 is clean, chunk i at i / h
    return            the buffer; its first chunk is executed
    next call         shift by one chunk, fresh noise at level 1 on top

so an action is denoised N times in all but each call runs only N/h network passes. A
fresh buffer (episode start) is first brought from pure noise to the entry levels by
ordinary sampling on a per-token grid, which the constant-level share of training
(``staggered_training_levels``) teaches the network.

Chunk layout (``StreamLayout``): the policy's chunk starts ``start`` = n_obs_steps - 1
steps before the current step (diffusion_policy's window); positions before ``start``
belong to chunk 0; chunk i covers [start + i * chunk, start + (i + 1) * chunk). The
horizon must end on a chunk boundary and chunks must not split an action token.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dp.diffusion.process import GaussianProcess
from dp.diffusion.samplers import Denoise, SamplingPlan, gaussian_sampler
from dp.errors import ConfigError


@dataclass(frozen=True)
class StreamLayout:
    horizon: int  # H actions in the buffer
    start: int  # index of the first executed action (n_obs_steps - 1)
    chunk: int  # actions executed per call (n_action_steps)
    patch: int = 1  # actions per token: a token's actions share one level

    def __post_init__(self):
        span = self.horizon - self.start
        problems = []
        if self.chunk < 1 or span % self.chunk:
            problems.append(f"horizon - (n_obs_steps - 1) = {span} is not a multiple of the chunk {self.chunk}")
        if self.start % self.patch or self.chunk % self.patch:
            problems.append(f"chunk boundaries (start {self.start}, chunk {self.chunk}) split action tokens of "
                            f"{self.patch} actions")
        if problems:
            raise ConfigError("streaming needs chunk-aligned levels: " + "; ".join(problems) + ". Use e.g. horizon 16, "
                             "n_obs_steps 1, n_action_steps 8 (or 4), or action_patch 1.")

    @property
    def chunks(self) -> int:
        return (self.horizon - self.start) // self.chunk

    def chunk_index(self, device=None) -> torch.Tensor:
        """[H] chunk of each position (positions before ``start`` belong to chunk 0)."""
        p = torch.arange(self.horizon, device=device)
        return ((p - self.start).clamp_min(0) // self.chunk).clamp_max(self.chunks - 1)


def staggered_training_levels(process: GaussianProcess, layout: StreamLayout, b: int, fraction: float,
                              device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training levels [B, H]: with probability ``fraction`` chunk i sits at (i + 1 - u) / h,
    u ~ U[0, 1) per sample (the streaming buffer at every phase of a call); otherwise one
    level for the whole chunk from the process's usual distribution (SDP's 80/20 mix).
    vp_cosine levels are rounded up onto its training grid."""
    h = layout.chunks
    constant = process.sample_level((b,), device=device, generator=generator)[:, None].expand(b, layout.horizon)
    u = torch.rand(b, 1, device=device, generator=generator)
    stagger = (layout.chunk_index(device)[None].float() + 1 - u) / h  # [B, H] in (0, 1]
    if process.schedule == "vp_cosine":
        k = process.train_steps
        stagger = (stagger * k).ceil().clamp(1, k) / k
    pick = torch.rand(b, 1, device=device, generator=generator) < fraction
    return torch.where(pick, stagger, constant)


class StreamingSampler:
    """Keeps the partially denoised buffer between calls; ``reset()`` between episodes.

    ``steps``: N, the levels an action passes through (a multiple of the number of chunks);
    ``base``: the sampler that takes each pass (ddim by default) on per-token levels."""

    name = "streaming"
    fixed_levels = False  # levels differ per token and per call

    def __init__(self, steps: int = 2, base: str = "ddim"):
        if steps < 1:
            raise ConfigError(f"streaming: steps must be >= 1, got {steps}.")
        self.steps = int(steps)
        self.base = gaussian_sampler(base, 1)
        self.process_kinds = self.base.process_kinds  # base=meanflow streams a MeanFlow policy
        self.buffer: torch.Tensor | None = None  # [B, H, A], normalized units
        self.levels: torch.Tensor | None = None  # [B, H], the buffer's levels at the start of a call

    def reset(self) -> None:
        self.buffer, self.levels = None, None

    def check(self, policy) -> None:
        """The policy's chunk layout and this step count fit; warn when it never trained on
        staggered levels (``policy.stream_fraction`` 0)."""
        self.passes(policy.stream_layout)
        if getattr(policy, "stream_fraction", 0) == 0:
            warnings.warn("sampler 'streaming' on a policy trained at one level per sample: it has never seen "
                          "the buffer's staggered levels, expect poor actions. Train with "
                          "policy.streaming.train_fraction=0.8.", stacklevel=3)

    def generate(self, ctx) -> torch.Tensor:
        return self.call(ctx.denoise, ctx.process, ctx.layout, ctx.prior, generator=ctx.generator, plan=ctx.plan)

    def passes(self, layout: StreamLayout) -> int:
        if self.steps % layout.chunks:
            raise ConfigError(f"streaming: steps ({self.steps}) must be a multiple of the number of chunks "
                             f"({layout.chunks} = (horizon - n_obs_steps + 1) / n_action_steps).")
        return self.steps // layout.chunks

    def network_calls(self, layout: StreamLayout | None = None) -> int:
        """Network passes per call once the buffer is warm (the first call of an episode runs more)."""
        return self.steps if layout is None else self.passes(layout)

    def entry_levels(self, layout: StreamLayout, device=None) -> torch.Tensor:
        """[H] levels at the start of a warm call: chunk i at (i + 1) / h."""
        return (layout.chunk_index(device).float() + 1) / layout.chunks

    def pass_grid(self, layout: StreamLayout, batch: int, device=None) -> torch.Tensor:
        """[P+1, B, H]: one call's passes, every chunk dropping by 1/h from its entry level."""
        entry = self.entry_levels(layout, device)
        grid = torch.stack([entry - j / self.steps for j in range(self.passes(layout) + 1)]).clamp_min(0)
        return grid[:, None].expand(-1, batch, -1)

    def warm_up_grid(self, process: GaussianProcess, layout: StreamLayout, batch: int, device=None):
        """[S+1, B, H]: pure noise -> the entry levels on the N-step grid, each token stopping at its own
        entry level (rows where nothing moves dropped); None when there is nothing to do."""
        entry = self.entry_levels(layout, device)
        full = process.sampling_levels(self.steps, device)  # [N+1], 1 -> 0
        grid = torch.maximum(full[:, None], entry[None])  # [N+1, H]
        keep = (grid[:-1] > grid[1:]).any(1)
        grid = torch.cat([grid[:1], grid[1:][keep]])
        return None if grid.shape[0] == 1 else grid[:, None].expand(-1, batch, -1)

    def plan(self, process: GaussianProcess, layout: StreamLayout, batch: int, device=None) -> "StreamingPlan":
        """Both kinds of call planned once (``Sampler.plan``): the first of an episode (warm-up, then a
        call's passes) and every later one (its passes), for ``batch`` rows."""
        if self.base.calls_per_step != 1:
            raise ConfigError(f"a planned streaming call takes a base sampler with one network call per step; "
                              f"{self.base.name!r} makes {self.base.calls_per_step}.")
        shape = (batch, layout.horizon)
        warm_up = self.warm_up_grid(process, layout, batch, device)
        return StreamingPlan(None if warm_up is None else self.base.plan(process, shape, device, warm_up),
                             self.base.plan(process, shape, device, self.pass_grid(layout, batch, device)))

    def call(self, denoise: Denoise, process: GaussianProcess, layout: StreamLayout,
             prior: Callable[[], torch.Tensor], generator: torch.Generator | None = None,
             plan: "StreamingPlan | None" = None) -> torch.Tensor:
        """One control step: the buffer [B, H, A] after this call's passes; chunk 0 is clean.

        ``prior()`` draws fresh noise [B, H, A] at level 1 (the top chunk takes its rows). ``plan``:
        ``self.plan(...)`` made beforehand (no host reads)."""
        noise = prior()
        b = noise.shape[0]
        if self.buffer is None or self.buffer.shape != noise.shape:
            if plan is None:
                grid = self.warm_up_grid(process, layout, b, noise.device)
                self.buffer = noise if grid is None else self.base.sample(denoise, process, noise, levels=grid,
                                                                          generator=generator)
            else:
                self.buffer = noise if plan.warm_up is None else self.base.sample(
                    denoise, process, noise, generator=generator, plan=plan.warm_up)
        else:  # drop the executed chunk, shift, fresh noise on top
            c = layout.chunk
            self.buffer = torch.cat([self.buffer[:, c:], noise[:, -c:]], dim=1)
        if plan is None:
            grid = self.pass_grid(layout, b, noise.device)
            self.buffer = self.base.sample(denoise, process, self.buffer, levels=grid, generator=generator)
            self.levels = grid[-1]
        else:
            self.buffer = self.base.sample(denoise, process, self.buffer, generator=generator, plan=plan.passes)
            self.levels = plan.passes.rows[-1]
        return self.buffer

    def plan_calls(self, process: GaussianProcess, batch: int, length: int, device=None, first: bool = True,
                   layout: StreamLayout | None = None) -> tuple["StreamingPlan", list[list[float]]]:
        """(the plan, per network call each action's level [H]) for an episode's first call or a later one."""
        plan = self.plan(process, layout, batch, device)
        grids = ([plan.warm_up] if first and plan.warm_up is not None else []) + [plan.passes]
        return plan, [row[0].tolist() for g in grids for row in g.rows[:-1]]


@dataclass(frozen=True)
class StreamingPlan:
    """A streaming sampler's two kinds of call, planned (``StreamingSampler.plan``): ``warm_up`` (pure noise
    to the entry levels, at an episode's first call; None when nothing moves) and ``passes`` (every call)."""

    warm_up: SamplingPlan | None
    passes: SamplingPlan
