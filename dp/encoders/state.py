"""Low-dim observation encoder: one token per observation step."""
from __future__ import annotations

import torch
from torch import nn


class StateEncoder(nn.Module):
    """Normalized state [B, To, S] -> tokens [B, To, D] (a two-layer MLP per step)."""

    def __init__(self, state_dim: int, dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or dim
        self.net = nn.Sequential(nn.Linear(state_dim, hidden), nn.Mish(), nn.Linear(hidden, dim))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net(state)
