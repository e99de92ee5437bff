"""Low-dim observation encoder: one token per observation step."""
from __future__ import annotations

import torch
from torch import nn


class StateEncoder(nn.Module):
    """Normalized state [B, To, S] -> tokens [B, To, D] (a two-layer MLP per step).

    ``angles``: dims that hold an angle in radians (left unnormalized, ``Normalizer.pass_through``);
    each enters the MLP as (sin, cos), so a block at 0.01 rad and one at 2 pi - 0.01 rad look alike
    instead of sitting at the two ends of the normalized range.
    """

    def __init__(self, state_dim: int, dim: int, hidden: int | None = None, angles: list[int] | None = None):
        super().__init__()
        hidden = hidden or dim
        self.angles = sorted(int(a) for a in angles or [])
        self.register_buffer("keep", torch.tensor([i for i in range(state_dim) if i not in self.angles]),
                             persistent=False)
        self.net = nn.Sequential(nn.Linear(state_dim + len(self.angles), hidden), nn.Mish(), nn.Linear(hidden, dim))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        if self.angles:
            theta = state[..., self.angles]
            state = torch.cat([state[..., self.keep], torch.sin(theta), torch.cos(theta)], dim=-1)
        return self.net(state)
