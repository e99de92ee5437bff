"""Attention over a video clip's tokens: full, factorized (VDT / Latte) and sparse (Sparse VideoGen).

A clip of T frames with P patches each is a frame-major sequence of N = T * P tokens
(``FrameLayout``). Two sparse patterns cover what a video DiT's heads do:

- **spatial**: a token attends to the tokens of its own frame (P keys);
- **temporal**: a token attends to the tokens at its own patch position in every frame (T keys).

Both run as batched dense attention after a layout transform, never as a masked N x N
product: spatial reshapes [B, h, T*P, d] -> [B*T, h, P, d]; temporal transposes to
position-major first, [B*P, h, T, d] (Sparse VideoGen's layout transform, which makes the
temporal pattern contiguous blocks). Their cost is N*P and N*T key reads instead of N*N.

Kernels replace ``scaled_dot_product_attention`` in a ``SelfAttention`` (``DiT.set_attention``):
``kernel(q, k, v, mask) -> out``, all [B, heads, N, head_dim].

- ``FactorizedAttention``: one fixed pattern per layer; ``factorized_kernels`` alternates
  temporal then spatial over the depth (VDT's temporal-then-spatial order, as Latte's
  interleaved blocks).
- ``SparseHeadAttention``: Sparse VideoGen's online profiling. At each call it draws
  ``sample_rows`` query rows, attends them fully and under each pattern, gives every head the
  pattern with the lower error, and runs each group of heads with its pattern. The first
  ``dense_calls`` network calls of a prediction run dense (``SparseState.call``; SVG keeps
  the first denoising steps dense).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dp.errors import ConfigError

PATTERNS = ("spatial", "temporal")
ATTENTIONS = ("full", "factorized", "sparse")


@dataclass(frozen=True)
class FrameLayout:
    """A frame-major clip: token ``f * patches + p`` is patch p of frame f."""

    frames: int
    patches: int

    @property
    def n(self) -> int:
        return self.frames * self.patches

    def check(self, n: int) -> None:
        if n != self.n:
            raise ConfigError(f"video attention expects the clip's {self.frames} frames x {self.patches} patches = "
                              f"{self.n} tokens per sequence, got {n} (no prefix or level tokens).")

    def mask(self, pattern: str, device=None) -> torch.Tensor:
        """The pattern as a dense bool mask [N, N] (True = may attend): for tests and profiling."""
        idx = torch.arange(self.n, device=device)
        frame, pos = idx // self.patches, idx % self.patches
        if pattern == "spatial":
            return frame[:, None] == frame[None, :]
        if pattern == "temporal":
            return pos[:, None] == pos[None, :]
        raise ConfigError(f"attention pattern must be one of {PATTERNS}, got {pattern!r}.")


def spatial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: FrameLayout) -> torch.Tensor:
    """Each token attends within its frame. q, k, v [B, h, T*P, d] -> [B, h, T*P, d]."""
    b, h, n, d = q.shape
    t, p = layout.frames, layout.patches
    split = lambda x: x.reshape(b, h, t, p, d).transpose(1, 2).reshape(b * t, h, p, d)  # noqa: E731
    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.reshape(b, t, h, p, d).transpose(1, 2).reshape(b, h, n, d)


def temporal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: FrameLayout) -> torch.Tensor:
    """Each token attends to its patch position across frames (position-major layout transform).
    q, k, v [B, h, T*P, d] -> [B, h, T*P, d]."""
    b, h, n, d = q.shape
    t, p = layout.frames, layout.patches
    split = lambda x: x.reshape(b, h, t, p, d).permute(0, 3, 1, 2, 4).reshape(b * p, h, t, d)  # noqa: E731
    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.reshape(b, p, h, t, d).permute(0, 2, 3, 1, 4).reshape(b, h, n, d)


PATTERN_FNS = {"spatial": spatial_attention, "temporal": temporal_attention}


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: FrameLayout) -> torch.Tensor:
    """Full attention over the clip (the fallback of a head no pattern approximates)."""
    return F.scaled_dot_product_attention(q, k, v)


KIND_NAMES = ("spatial", "temporal", "dense")  # SparseHeadAttention's per-head codes 0, 1, 2
KIND_FNS = (spatial_attention, temporal_attention, dense_attention)


def restricted_attention_errors(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How far attention restricted to each mask is from full attention, for some query rows.

    q [B, h, r, d] (the rows), k, v [B, h, N, d], masks [P, r, N] (nonzero = may attend). A mask's
    output on a row is full attention's probabilities restricted to it and renormalized, which is
    exactly the masked softmax, from one r x N score matrix. Returns the squared error per mask and
    head summed over batch, rows and channels [P, h], and full attention's squared output per head
    [h] (the scale for a relative error)."""
    probs = ((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5).softmax(-1)  # [B, h, r, N]
    full = probs @ v                                                       # [B, h, r, d]
    kept = probs * masks.to(probs.dtype)[:, None, None]                    # [P, B, h, r, N]
    restricted = (kept @ v) / kept.sum(-1, keepdim=True)
    errors = (restricted - full).float().pow(2).sum(dim=(1, 3, 4))
    return errors, full.float().pow(2).sum(dim=(0, 2, 3)).clamp_min(1e-12)


class FactorizedAttention:
    """One fixed pattern (``spatial`` or ``temporal``) for every head of a layer."""

    def __init__(self, layout: FrameLayout, pattern: str):
        if pattern not in PATTERNS:
            raise ConfigError(f"attention pattern must be one of {PATTERNS}, got {pattern!r}.")
        self.layout, self.pattern = layout, pattern

    def __call__(self, q, k, v, mask=None):
        self.layout.check(q.shape[2])
        if mask is not None:
            raise ConfigError("factorized video attention takes no extra attention mask.")
        return PATTERN_FNS[self.pattern](q, k, v, self.layout)


def factorized_kernels(layout: FrameLayout, depth: int) -> list[FactorizedAttention]:
    """Temporal on even layers, spatial on odd ones (VDT's temporal-then-spatial order)."""
    return [FactorizedAttention(layout, "temporal" if i % 2 == 0 else "spatial") for i in range(depth)]


@dataclass
class SparseState:
    """Shared by a model's ``SparseHeadAttention`` layers: the call index within a prediction
    (set by the caller before each network call) and what profiling found."""

    dense_calls: int = 1          # network calls per prediction that run dense before sparsity starts
    sample_rows: int = 16         # query rows profiled per layer and call
    # a head whose better pattern still misses full attention by more than this (squared error relative to
    # full attention's output on the sampled rows) runs dense; None: every head takes a pattern
    tolerance: float | None = None
    call: int = 0
    timing: bool = False          # accumulate profiling seconds (synchronizes on CUDA)
    profile_seconds: float = 0.0
    counts: dict = field(default_factory=lambda: {"dense": 0, "spatial": 0, "temporal": 0})

    def reset_stats(self) -> None:
        self.profile_seconds = 0.0
        self.counts = {"dense": 0, "spatial": 0, "temporal": 0}


class SparseHeadAttention:
    """Sparse VideoGen's attention for one layer: per head, spatial or temporal, chosen online."""

    def __init__(self, layout: FrameLayout, state: SparseState, generator_seed: int = 0):
        self.layout, self.state = layout, state
        self.generator = torch.Generator().manual_seed(generator_seed)
        self.last_choice: torch.Tensor | None = None  # [heads] bool, True = temporal
        self._where: torch.Tensor | None = None          # [2, N]: each token's frame and patch position

    def __call__(self, q, k, v, mask=None):
        self.layout.check(q.shape[2])
        if mask is not None:
            raise ConfigError("sparse video attention takes no extra attention mask.")
        h = q.shape[1]
        if self.state.call < self.state.dense_calls:
            self.state.counts["dense"] += h
            return F.scaled_dot_product_attention(q, k, v)
        codes = self.profile(q, k, v).tolist()  # [heads]: 0 spatial, 1 temporal, 2 dense; one host read per call
        self.last_choice = torch.tensor([c == 1 for c in codes])
        heads_of = {code: [i for i, c in enumerate(codes) if c == code] for code in sorted(set(codes))}
        for code, heads in heads_of.items():
            self.state.counts[KIND_NAMES[code]] += len(heads)
        if len(heads_of) == 1:
            return KIND_FNS[codes[0]](q, k, v, self.layout)
        out = torch.empty_like(q)
        for code, heads in heads_of.items():
            out[:, heads] = KIND_FNS[code](q[:, heads], k[:, heads], v[:, heads], self.layout)
        return out

    @torch.no_grad()
    def profile(self, q, k, v) -> torch.Tensor:
        """[heads] int: 1 where the temporal pattern is closer to full attention than the spatial one
        (0) on ``sample_rows`` sampled query rows (squared error summed over the batch), 2 where even
        the closer one misses by more than ``state.tolerance`` of full attention's output (dense)
        (``restricted_attention_errors``)."""
        timing = self.state.timing
        if timing:
            if q.is_cuda:
                torch.cuda.synchronize(q.device)
            t0 = time.perf_counter()
        n = q.shape[2]
        if self._where is None or self._where.device != q.device:
            idx = torch.arange(n, device=q.device)
            self._where = torch.stack([idx // self.layout.patches, idx % self.layout.patches])  # [2, N]: frame, position
        rows = torch.randint(n, (self.state.sample_rows,), generator=self.generator).to(q.device)
        masks = self._where[:, rows, None] == self._where[:, None, :]  # [2, r, N]: spatial, temporal
        errors, scale = restricted_attention_errors(q[:, :, rows], k, v, masks)  # [2, h], [h]
        choice = (errors[1] < errors[0]).long()
        if self.state.tolerance is not None:
            choice = torch.where(errors.min(0).values / scale > self.state.tolerance, 2, choice)
        if timing:
            if q.is_cuda:
                torch.cuda.synchronize(q.device)
            self.state.profile_seconds += time.perf_counter() - t0
        return choice


def video_kernels(attention: str, layout: FrameLayout, depth: int, state: SparseState | None = None):
    """Per-layer kernels for ``attention`` (full: None, the DiT's own dense attention)."""
    if attention not in ATTENTIONS:
        raise ConfigError(f"attention must be one of {ATTENTIONS}, got {attention!r}.")
    if attention == "full":
        return None
    if attention == "factorized":
        return factorized_kernels(layout, depth)
    state = state or SparseState()
    return [SparseHeadAttention(layout, state, generator_seed=i) for i in range(depth)]
