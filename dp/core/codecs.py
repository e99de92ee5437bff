"""Codecs: what a denoised target is to the core, and back. A policy composes one per target.

    tokens = codec.encode(x)           # target x -> tokens [B, N, D]
    out = codec.decode(h)              # core output [B, N, D] -> prediction in the target's layout
    token_level = codec.token_levels(level)   # per-element levels [B, H] -> per-token [B, N]
    shape = codec.shape(b)             # the target's shape for a batch of b (the sampler's prior)

    x = codec.target(actions)          # normalized actions -> what the process corrupts
    actions = codec.output(x0)         # the sampler's result -> normalized actions

``kind`` says what ``decode`` returns: "continuous" (a value per element, for a Gaussian
process) or "discrete" (logits over bins, for a masked process). Image patches of future
frames are a continuous codec over [B, T, C, H, W] targets.
"""
from __future__ import annotations

import torch
from torch import nn

from dp.core.embeddings import ActionHead, ActionTokenizer
from dp.errors import ConfigError


class ContinuousActionCodec(nn.Module):
    """Action chunks [B, H, A] <-> tokens [B, H/p, D], ``patch`` p actions per token (learned
    positions in, DiT's zero-initialised linear head out)."""

    kind = "continuous"

    def __init__(self, action_dim: int, dim: int, horizon: int, patch: int = 1):
        super().__init__()
        self.action_dim, self.horizon, self.patch = action_dim, horizon, patch
        self.tokenizer = ActionTokenizer(action_dim, dim, horizon, patch)
        self.head = ActionHead(dim, action_dim, patch)

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized actions [B, H, A] -> what the process corrupts (the same tensor)."""
        return x

    def output(self, x: torch.Tensor) -> torch.Tensor:
        """What the sampler returns -> normalized actions [B, H, A]."""
        return x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokenizer(x)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h)

    def token_levels(self, level: torch.Tensor) -> torch.Tensor:
        """A token's level is its first action's (callers keep levels constant within a patch)."""
        return level[:, :: self.patch]

    def shape(self, b: int) -> tuple[int, int, int]:
        return (b, self.horizon, self.action_dim)


class DiscreteActionCodec(nn.Module):
    """Action chunks [B, H, A] <-> H*A tokens, one per (step, action dimension), step-major.

    Each dimension is clipped to its dataset 1st/99th percentiles (``fit``) and cut into
    ``bins`` uniform bins; id ``bins`` is ``[MASK]``. In: a token embedding plus a learned
    embedding per step and per dimension. Out: logits over the bins [B, N, bins]. The
    percentiles are buffers, so they travel in the checkpoint.
    """

    kind = "discrete"

    def __init__(self, action_dim: int, dim: int, horizon: int, bins: int = 256):
        super().__init__()
        if not isinstance(bins, int) or bins < 2:
            raise ConfigError(f"codec bins must be an integer >= 2, got {bins!r}.")
        self.action_dim, self.horizon, self.bins, self.patch = action_dim, horizon, bins, 1
        self.mask_id = bins
        self.register_buffer("low", torch.full((action_dim,), -1.0))  # per-dimension q01 (policy units)
        self.register_buffer("high", torch.ones(action_dim))  # per-dimension q99
        self.embed = nn.Embedding(bins + 1, dim)
        self.step_pos = nn.Parameter(torch.zeros(1, horizon, 1, dim))
        self.dim_pos = nn.Parameter(torch.zeros(1, 1, action_dim, dim))
        nn.init.normal_(self.step_pos, std=0.02)
        nn.init.normal_(self.dim_pos, std=0.02)
        self.head = nn.Linear(dim, bins)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @torch.no_grad()
    def fit(self, actions: torch.Tensor, scale: torch.Tensor | None = None) -> dict[str, list[float]]:
        """Bin limits from ``actions`` [..., A] (1st / 99th percentiles per dimension); returns the
        round-trip error of ``dequantize(quantize(a))`` per dimension (max and mean), divided by
        ``scale`` [A] when given (the normalizer's: errors then read in env units)."""
        a = actions.reshape(-1, self.action_dim).float()
        low, high = torch.quantile(a, 0.01, dim=0), torch.quantile(a, 0.99, dim=0)
        flat = (high - low) <= 1e-8
        if bool(flat.any()):
            raise ConfigError(f"action dimension(s) {flat.nonzero().flatten().tolist()} have equal 1st and 99th "
                              "percentiles (a constant action): a discrete codec cannot bin them. Drop the "
                              "dimension from the dataset or use a continuous policy.")
        self.low.copy_(low)
        self.high.copy_(high)
        err = (self.dequantize(self.quantize(a[:, None])).reshape(-1, self.action_dim) - a).abs()
        if scale is not None:
            err = err / scale.abs().to(err)
        return {"max": err.max(0).values.tolist(), "mean": err.mean(0).tolist()}

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, A] -> bin ids [B, H*A] (long), values clipped to the fitted percentiles."""
        u = ((x - self.low) / (self.high - self.low)).clamp(0.0, 1.0)
        return (u * self.bins).long().clamp_max(self.bins - 1).flatten(1)

    def dequantize(self, ids: torch.Tensor) -> torch.Tensor:
        """Bin ids [B, H*A] -> bin centres [B, H, A]."""
        centres = (ids.clamp_max(self.bins - 1).float() + 0.5) / self.bins
        return (self.low + centres.view(ids.shape[0], -1, self.action_dim) * (self.high - self.low))

    def target(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantize(x)

    def output(self, ids: torch.Tensor) -> torch.Tensor:
        return self.dequantize(ids)

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(ids).view(ids.shape[0], self.horizon, self.action_dim, -1)
        return (tokens + self.step_pos + self.dim_pos).flatten(1, 2)

    def encode_at(self, ids: torch.Tensor, position: int) -> torch.Tensor:
        """Tokens [B, 1] placed at flat position ``position`` (step-major) -> [B, 1, D]."""
        step, dim = divmod(position, self.action_dim)
        return self.embed(ids) + self.step_pos[:, step] + self.dim_pos[:, 0, dim]

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h)

    def token_levels(self, level: torch.Tensor) -> torch.Tensor:
        return level  # one level per token already

    def shape(self, b: int) -> tuple[int, int]:
        return (b, self.horizon * self.action_dim)
