"""Exponential moving average of weights with diffusion_policy's power schedule:
decay(step) = 1 - (1 + step / inv_gamma) ** -power, clamped to [min_decay, max_decay]."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, power: float = 0.75, inv_gamma: float = 1.0,
                 min_decay: float = 0.0, max_decay: float = 0.9999):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.power, self.inv_gamma, self.min_decay, self.max_decay = power, inv_gamma, min_decay, max_decay

    def decay(self, step: int) -> float:
        value = 1 - (1 + step / self.inv_gamma) ** -self.power
        return max(self.min_decay, min(value, self.max_decay))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.decay(step)
        ema_params = dict(self.model.named_parameters())
        for name, p in model.named_parameters():
            ema_params[name].lerp_(p.detach(), 1 - d)
        ema_bufs = dict(self.model.named_buffers())
        for name, b in model.named_buffers():  # normalizer statistics and similar: copy
            ema_bufs[name].copy_(b)
