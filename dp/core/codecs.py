"""Codecs: what a denoised target is to the core, and back. A policy composes one per target.

    tokens = codec.encode(x)           # target x -> tokens [B, N, D]
    out = codec.decode(h)              # core output [B, N, D] -> prediction in the target's layout
    token_level = codec.token_levels(level)   # per-element levels [B, H] -> per-token [B, N]
    shape = codec.shape(b)             # the target's shape for a batch of b (the sampler's prior)

``kind`` says what ``decode`` returns: "continuous" (a value per element, for a Gaussian
process) or, for codecs to come, "discrete" (logits over bins, for a masked process). Image
patches of future frames are a continuous codec over [B, T, C, H, W] targets.
"""
from __future__ import annotations

import torch
from torch import nn

from dp.core.embeddings import ActionHead, ActionTokenizer


class ContinuousActionCodec(nn.Module):
    """Action chunks [B, H, A] <-> tokens [B, H/p, D], ``patch`` p actions per token (learned
    positions in, DiT's zero-initialised linear head out)."""

    kind = "continuous"

    def __init__(self, action_dim: int, dim: int, horizon: int, patch: int = 1):
        super().__init__()
        self.action_dim, self.horizon, self.patch = action_dim, horizon, patch
        self.tokenizer = ActionTokenizer(action_dim, dim, horizon, patch)
        self.head = ActionHead(dim, action_dim, patch)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokenizer(x)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h)

    def token_levels(self, level: torch.Tensor) -> torch.Tensor:
        """A token's level is its first action's (callers keep levels constant within a patch)."""
        return level[:, :: self.patch]

    def shape(self, b: int) -> tuple[int, int, int]:
        return (b, self.horizon, self.action_dim)
