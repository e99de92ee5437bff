"""A policy's ``predict_action`` at a fixed batch as one function of tensors, with no host reads.

    planned = PlannedPrediction(policy, batch=1)
    actions = planned(*[obs[k] for k in planned.keys], noise)   # [B, H, A], env units

Everything that depends only on the sampler (its level grid and the branches on it, each network
call's level, cached expert routes) is decided when it is built (``policy.plan_prediction``), so
the forward pass is straight-line tensor code: what a CUDA graph capture and ``torch.export``
need. The sampler's starting noise is an input (``policy.prior_sample``), so the caller keeps
``initial_noise`` semantics and a traced graph holds no random state.

Build it again after changing the sampler; weights may change in place (they are read, not
copied), except where a consumer copies them (an exported artifact, a CUDA graph's cached
terms: ``GraphedPrediction`` rebuilds on a weight change).
"""
from __future__ import annotations

import torch
from torch import nn

from dp.errors import ConfigError


class PlannedPrediction(nn.Module):
    """forward(*obs, noise): obs tensors [B, T, ...] in ``keys`` order (normalization included),
    noise [B, H, A] -> actions [B, H, A] in env units."""

    def __init__(self, policy, batch: int = 1):
        super().__init__()
        if not hasattr(policy, "plan_prediction"):
            raise ConfigError(f"{type(policy).__name__} has no planned prediction; planned (graphed, exported) "
                              f"inference takes the denoising policies (dit, mode, meanflow, switch_dit).")
        if getattr(policy, "language", None) is not None:
            raise ConfigError("a language-conditioned policy reads its instruction as text, which a planned "
                              "prediction cannot take as a tensor; run it eagerly.")
        self.policy = policy
        self.keys = list(policy.obs_encoder.keys)
        self.plan = policy.plan_prediction(batch)
        self.batch = batch

    @property
    def noise_shape(self) -> tuple[int, ...]:
        return tuple(self.policy.codec.shape(self.batch))

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        *obs, noise = tensors
        if len(obs) != len(self.keys):
            raise ValueError(f"expected {len(self.keys)} observation tensors ({self.keys}) and the noise, "
                             f"got {len(tensors)} tensors.")
        policy = self.policy
        normalized = policy.normalize_obs(dict(zip(self.keys, obs)))
        target = policy.sample_target(normalized, plan=self.plan, noise=noise)
        return policy.normalizer.unnormalize("action", policy.codec.output(target))
