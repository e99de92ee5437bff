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


def pixels_to_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8-range pixels (0..255) -> floats in [-1, 1], what a frame codec denoises."""
    return frames.float() / 127.5 - 1.0


def unit_to_image(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> images in [0, 1] (clamped)."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


class FramePatchCodec(nn.Module):
    """Video frames [B, T, C, H, W] (pixels scaled to [-1, 1]) <-> tokens [B, T*P, D], frame-major,
    P = (H/p) * (W/p) patches of p x p pixels per frame (DiT/ViT patchify; a zero-initialised
    linear head unpatchifies). A token carries a learned position per patch and per frame, and
    takes its frame's level: levels are per frame [B, T] (diffusion forcing)."""

    kind = "continuous"

    def __init__(self, frames: int, channels: int, height: int, width: int, dim: int, patch: int):
        super().__init__()
        if patch < 1 or height % patch or width % patch:
            raise ConfigError(f"frame size {height}x{width} is not divisible by the patch size {patch}: pick a "
                              f"patch that divides both (e.g. 12 or 14 for 84 px, 8 or 16 for 64 px).")
        self.frames, self.channels, self.height, self.width, self.patch = frames, channels, height, width, patch
        self.grid = (height // patch, width // patch)
        self.patches = self.grid[0] * self.grid[1]
        self.patch_dim = channels * patch * patch
        self.embed = nn.Linear(self.patch_dim, dim)
        self.pos_space = nn.Parameter(torch.zeros(1, 1, self.patches, dim))
        self.pos_time = nn.Parameter(torch.zeros(1, frames, 1, dim))
        nn.init.normal_(self.pos_space, std=0.02)
        nn.init.normal_(self.pos_time, std=0.02)
        self.head = nn.Linear(dim, self.patch_dim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, C, H, W] -> [B, T, P, C*p*p] (patches row-major over the grid)."""
        b, t = x.shape[:2]
        p, (gh, gw) = self.patch, self.grid
        x = x.reshape(b, t, self.channels, gh, p, gw, p)
        return x.permute(0, 1, 3, 5, 2, 4, 6).reshape(b, t, self.patches, self.patch_dim)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, P, C*p*p] -> [B, T, C, H, W]."""
        b, t = x.shape[:2]
        p, (gh, gw) = self.patch, self.grid
        x = x.reshape(b, t, gh, gw, self.channels, p, p)
        return x.permute(0, 1, 4, 2, 5, 3, 6).reshape(b, t, self.channels, self.height, self.width)

    def target(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def output(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def encode(self, x: torch.Tensor, first: int = 0) -> torch.Tensor:
        """Frames [B, T, C, H, W] -> [B, T*P, D]; they are frames ``first`` .. ``first + T - 1`` of
        the clip (their time positions), all of it by default."""
        if tuple(x.shape[2:]) != (self.channels, self.height, self.width) or first + x.shape[1] > self.frames:
            raise ValueError(f"frames must be [B, <= {self.frames - first}, {self.channels}, {self.height}, "
                             f"{self.width}], got {tuple(x.shape)}.")
        return self.embed_patches(self.patchify(x), first)

    def embed_patches(self, patches: torch.Tensor, first: int = 0) -> torch.Tensor:
        """Patches [B, T, P, C*p*p] of frames ``first`` .. -> tokens [B, T*P, D]."""
        pos_time = self.pos_time[:, first : first + patches.shape[1]]
        return (self.embed(patches) + self.pos_space + pos_time).flatten(1, 2)

    def decode_patches(self, h: torch.Tensor) -> torch.Tensor:
        """Tokens [B, T*P, D] -> patches [B, T, P, C*p*p]."""
        return self.head(h).reshape(h.shape[0], -1, self.patches, self.patch_dim)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """[B, T*P, D] -> [B, T, C, H, W]."""
        return self.unpatchify(self.decode_patches(h))

    def token_levels(self, level: torch.Tensor) -> torch.Tensor:
        """Per-frame levels [B, T] -> per-token [B, T*P]."""
        return level.repeat_interleave(self.patches, dim=1)

    def shape(self, b: int) -> tuple[int, int, int, int, int]:
        return (b, self.frames, self.channels, self.height, self.width)


class FramesAndActionsCodec(nn.Module):
    """Future frames and an action chunk denoised as one target (PAD).

    The target is packed in rows so every Gaussian sampler walks it as one tensor
    [B, R, W]: R = F*P patch rows of the F future frames, then H action rows; W = max(patch
    size C*p*p, A), each row zero-padded to W (the padding is never read: ``encode`` takes the
    real columns, ``decode`` writes zeros there). Tokens: a token per patch row (levels per
    row), then the action codec's tokens."""

    kind = "continuous"

    def __init__(self, frames: FramePatchCodec, actions: ContinuousActionCodec, first_future: int, n_future: int):
        super().__init__()
        self.frames, self.actions = frames, actions
        self.first_future, self.n_future = first_future, n_future
        self.frame_rows = n_future * frames.patches
        self.horizon, self.action_dim, self.patch = actions.horizon, actions.action_dim, actions.patch
        self.width = max(frames.patch_dim, actions.action_dim)

    def pack(self, patches: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Future patches [B, F, P, C*p*p] and actions [B, H, A] -> rows [B, R, W]."""
        pad = lambda t: torch.nn.functional.pad(t, (0, self.width - t.shape[-1]))  # noqa: E731
        return torch.cat([pad(patches.flatten(1, 2)), pad(actions)], dim=1)

    def unpack(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows [B, R, W] -> (patches [B, F, P, C*p*p], actions [B, H, A])."""
        patches = x[:, : self.frame_rows, : self.frames.patch_dim].reshape(x.shape[0], self.n_future, self.frames.patches, -1)
        return patches, x[:, self.frame_rows :, : self.action_dim]

    def target(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def output(self, x: torch.Tensor) -> torch.Tensor:
        """The sampled rows -> normalized actions [B, H, A]."""
        return self.unpack(x)[1]

    def future_frames(self, x: torch.Tensor) -> torch.Tensor:
        """The sampled rows -> future frames [B, F, C, H, W] in [-1, 1] units."""
        return self.frames.unpatchify(self.unpack(x)[0])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        patches, actions = self.unpack(x)
        return torch.cat([self.frames.embed_patches(patches, self.first_future), self.actions.encode(actions)], dim=1)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return self.pack(self.frames.decode_patches(h[:, : self.frame_rows]), self.actions.decode(h[:, self.frame_rows :]))

    def token_levels(self, level: torch.Tensor) -> torch.Tensor:
        """Per-row levels [B, R] -> per-token [B, F*P + H/patch]."""
        return torch.cat([level[:, : self.frame_rows], self.actions.token_levels(level[:, self.frame_rows :])], dim=1)

    def shape(self, b: int) -> tuple[int, int, int]:
        return (b, self.frame_rows + self.horizon, self.width)

    def token_mask(self) -> torch.Tensor:
        """[N, N] bool over the tokens: frame tokens never attend to action tokens (PAD: the image
        pathway does not depend on the actions); action tokens attend to everything."""
        n = self.frame_rows + self.horizon // self.patch
        mask = torch.ones(n, n, dtype=torch.bool)
        mask[: self.frame_rows, self.frame_rows :] = False
        return mask
