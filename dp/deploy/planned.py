"""A policy's ``predict_action`` at a fixed batch as one function of tensors, with no host reads.

    planned = PlannedPrediction(policy, batch=1)
    actions = planned(*[obs[k] for k in planned.keys], noise)   # [B, H, A], env units

Everything that depends only on the sampler (its level grid and the branches on it, each network
call's level, cached expert routes) is decided when it is built (``policy.plan_prediction``), so
the forward pass is straight-line tensor code: what a CUDA graph capture and ``torch.export``
need. The sampler's starting noise is an input (``policy.prior_sample``), so the caller keeps
``initial_noise`` semantics and a traced graph holds no random state.

Truncated sampling plans its anchored path (noise for every anchor of every row is the input) and
returns the best anchor's score per row beside the actions; its fallback, a full sample for the rows
that score low, is a second planned prediction (``sampler=policy.sampler.fallback``) that the caller
runs when a row needs it (``dp.runtime.fallback``).

A streaming sampler keeps its buffer between calls: planned, that buffer is an input and an
output (``first=True`` plans an episode's first call, which starts from noise alone; ``False``
a later one). The sampler is the policy's when this is built (or ``sampler``), whatever the policy
runs later; weights may change in place (they are read, not copied), except where a consumer copies
them (an exported artifact, a CUDA graph's cached terms: ``GraphedPrediction`` rebuilds on a weight change).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from dp.errors import ConfigError


class PlannedPrediction(nn.Module):
    """forward(*obs, noise): obs tensors [B, T, ...] in ``keys`` order (normalization included),
    noise ``noise_shape`` -> actions [B, H, A] in env units. A streaming policy's takes and returns its
    buffer too (see ``forward``); ``first`` says which kind of call it plans. A truncated one returns
    (actions, best anchor score [B])."""

    def __init__(self, policy, batch: int = 1, first: bool | None = None, sampler=None):
        super().__init__()
        if not hasattr(policy, "plan_prediction"):
            raise ConfigError(f"{type(policy).__name__} has no planned prediction; planned (graphed, exported) "
                              f"inference takes the denoising policies (dit, mode, meanflow, switch_dit).")
        if getattr(policy, "language", None) is not None:
            raise ConfigError("a language-conditioned policy reads its instruction as text, which a planned "
                              "prediction cannot take as a tensor; run it eagerly.")
        self.policy = policy
        self.sampler = sampler if sampler is not None else policy.sampler
        self.keys = list(policy.obs_encoder.keys)
        self.stateful = hasattr(self.sampler, "buffer")  # streaming: the buffer is state between calls
        # truncated: the sampler brings a full sample for rows its anchors do not cover (a second plan)
        self.truncated = getattr(self.sampler, "fallback", None) is not None
        self.first = first if self.stateful else None
        with self._running():
            self.plan = policy.plan_prediction(batch, first=self.first)
        self.batch = batch

    @contextmanager
    def _running(self):
        """The policy with this prediction's sampler for the duration (restored after)."""
        saved = self.policy.sampler
        self.policy.sampler = self.sampler
        try:
            yield
        finally:
            self.policy.sampler = saved

    @property
    def noise_shape(self) -> tuple[int, ...]:
        """The sampler's start: [B, H, A], or [B x anchors, H, A] for truncated sampling."""
        rows = self.batch * (self.sampler.anchor_count if self.truncated else 1)
        return tuple(self.policy.codec.shape(rows))

    @property
    def noise_scale(self) -> float:
        """The noise is this times a standard normal (truncated: the anchors' noise is standard)."""
        return 1.0 if self.truncated else self.policy.process.prior_scale()

    def draw_noise(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A starting noise of ``noise_shape`` on the policy's device (truncated: the anchors' noise), drawn
        on the generator's device."""
        device = generator.device if generator is not None else self.policy.device
        return (self.noise_scale * torch.randn(self.noise_shape, generator=generator, device=device)).to(self.policy.device)

    @property
    def state_shape(self) -> tuple[int, ...] | None:
        """The streaming buffer's shape [B, H, A] (normalized units), None for stateless samplers."""
        return tuple(self.policy.codec.shape(self.batch)) if self.stateful else None

    def forward(self, *tensors: torch.Tensor):
        """Stateless: (*obs, noise) -> actions. Streaming: (*obs, noise) -> (actions, buffer) for an
        episode's first call, (*obs, buffer, noise) -> (actions, buffer) for a later one. Truncated:
        (*obs, noise) -> (actions, best anchor score [B], sigmoid)."""
        takes_state = self.stateful and not self.first
        *obs, noise = tensors
        state = obs.pop() if takes_state else None
        if len(obs) != len(self.keys):
            raise ValueError(f"expected {len(self.keys)} observation tensors ({self.keys}), "
                             f"{'the buffer, ' if takes_state else ''}and the noise; got {len(tensors)} tensors.")
        policy, sampler = self.policy, self.sampler
        normalized = policy.normalize_obs(dict(zip(self.keys, obs)))
        saved = (sampler.buffer, sampler.levels) if self.stateful else None
        try:
            if self.stateful:
                sampler.buffer = state  # this call's state goes in and out as tensors, not as the policy's
            with self._running():
                target = policy.sample_target(normalized, plan=self.plan, noise=noise)
        finally:
            if self.stateful:
                sampler.buffer, sampler.levels = saved
        actions = policy.normalizer.unnormalize("action", policy.codec.output(target))
        if self.truncated:
            return actions, sampler.best_score.sigmoid()
        return (actions, target) if self.stateful else actions
