"""Embeddings: noise level, positions, and the action tokenizer/head.

Levels are continuous in [0, 1] (0 clean, 1 pure noise). A level is scaled by
``LEVEL_SCALE`` before the sinusoid so that 100-1000 distinct training levels get
well-separated features, as DiT/DDPM do with integer timesteps.
"""
from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from dp.errors import ConfigError

LEVEL_SCALE = 1000.0


def sinusoidal(x: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features of a real tensor: [...] -> [..., dim] (cos half, then sin half)."""
    half = dim // 2
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32  # at least float32 (levels x 1000)
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=dtype) / half)
    args = x.to(dtype)[..., None] * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[..., :1])], dim=-1)
    return emb


class LevelEmbedding(nn.Module):
    """Per-token noise level -> conditioning vector: [B, N] -> [B, N, D] (sinusoid + MLP)."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, level: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal(level * LEVEL_SCALE, self.freq_dim).to(self.mlp[0].weight.dtype))


class ActionTokenizer(nn.Module):
    """Action chunk -> tokens with learned positions: [B, H, A] -> [B, H/p, D].

    ``patch`` p groups p consecutive actions into one token (as image patches group pixels).
    p = 1 is one token per action. Larger p gives the denoiser p times fewer tokens per
    step, and at batch 1 on a CPU that is most of its cost."""

    def __init__(self, action_dim: int, dim: int, horizon: int, patch: int = 1):
        super().__init__()
        if patch < 1 or horizon % patch:
            raise ConfigError(f"action patch must divide the horizon {horizon}; got {patch}.")
        self.patch = patch
        self.proj = nn.Linear(action_dim * patch, dim)
        self.pos = nn.Parameter(torch.zeros(1, horizon // patch, dim))
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, actions: torch.Tensor) -> torch.Tensor:
        tokens = rearrange(actions, "b (n p) a -> b n (p a)", p=self.patch)
        return self.proj(tokens) + self.pos[:, : tokens.shape[1]]


class ActionHead(nn.Module):
    """Tokens -> per-step prediction: [B, H/p, D] -> [B, H, A]. Zero-initialised (DiT's final layer)."""

    def __init__(self, dim: int, action_dim: int, patch: int = 1):
        super().__init__()
        self.patch = patch
        self.proj = nn.Linear(dim, action_dim * patch)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return rearrange(self.proj(tokens), "b n (p a) -> b (n p) a", p=self.patch)


class PatchTokenizer(nn.Module):
    """Images -> patch tokens with learned positions: [B, C, H, W] -> [B, (H/p)(W/p), D]."""

    def __init__(self, in_channels: int, dim: int, patch: int, image_size: int):
        super().__init__()
        if image_size % patch:
            raise ConfigError(f"image_size {image_size} must be a multiple of patch {patch}.")
        self.patch = patch
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(1, (image_size // patch) ** 2, dim))
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.proj(images)  # [B, D, h, w]
        return x.flatten(2).transpose(1, 2) + self.pos
