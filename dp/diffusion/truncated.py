"""Truncated diffusion around anchors (DiffusionDrive, Liao et al.).

Anchors are k-means centres of the dataset's normalized action chunks. Training noises
every anchor only up to a small level and asks the network, per anchor, for the clean
chunk (x0) and a score; the anchor nearest the demonstration is the winner: the score is
trained by a sigmoid focal loss over anchors and the reconstruction (L1) only on the winner.
Inference noises the anchors to an even smaller level, takes ``steps`` (2) DDIM steps on
all of them at once, and keeps the highest-scoring chunk.

    anchors = kmeans(chunks.flatten(1), k=20).view(20, H, A)
    win = nearest_anchor(x0, anchors)                   # [B]
    loss = 10 * sigmoid_focal_loss(scores, win) + 8 * l1(x0_hat[win], x0)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dp.diffusion.samplers import gaussian_sampler
from dp.errors import ConfigError


def kmeans(x: torch.Tensor, k: int, iters: int = 50, seed: int = 0) -> torch.Tensor:
    """x [N, F] -> k centres [k, F] (k-means++ initialisation, then Lloyd iterations).
    Deterministic for a seed. An empty cluster takes the point farthest from its centre."""
    n = x.shape[0]
    if n < k:
        raise ConfigError(f"k-means needs at least k={k} samples; the dataset has {n} action chunks.")
    g = torch.Generator().manual_seed(seed)
    x = x.float().cpu()
    centres = [x[torch.randint(n, (1,), generator=g)].squeeze(0)]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        idx = torch.multinomial(d2 / d2.sum() if d2.sum() > 0 else torch.ones(n), 1, generator=g)
        centres.append(x[idx].squeeze(0))
        d2 = torch.minimum(d2, ((x - centres[-1]) ** 2).sum(1))
    c = torch.stack(centres)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)
        new = torch.zeros_like(c).index_add_(0, assign, x)
        count = torch.bincount(assign, minlength=k)
        for j in (count == 0).nonzero().flatten().tolist():  # re-seed an empty cluster
            far = torch.cdist(x, c).min(1).values.argmax()
            new[j], count[j] = x[far], 1
        new = new / count[:, None]
        if torch.allclose(new, c):
            break
        c = new
    return c


def nearest_anchor(x0: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """x0 [B, H, A], anchors [K, H, A] -> index [B] of the anchor with the least mean
    per-step Euclidean distance (DiffusionDrive's average displacement)."""
    diff = x0[:, None] - anchors[None]  # [B, K, H, A]
    return diff.norm(dim=-1).mean(-1).argmin(1)


def sigmoid_focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float = 0.25) -> torch.Tensor:
    """logits [B, K], target [B] (the winning anchor) -> focal loss summed over anchors,
    averaged over the batch (RetinaNet's form, as DiffusionDrive uses it)."""
    onehot = F.one_hot(target, logits.shape[1]).to(logits.dtype)
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    p_t = p * onehot + (1 - p) * (1 - onehot)
    a_t = alpha * onehot + (1 - alpha) * (1 - onehot)
    return (a_t * (1 - p_t) ** gamma * ce).sum(1).mean()


class TruncatedSampler:
    """Settings of truncated sampling; the policy drives it (it needs the anchors and scores).

    steps: DDIM steps from ``level`` to 0 (DiffusionDrive: 2); level: the level the anchors
    are noised to (DiffusionDrive: t = 8 of 1000); fallback_score: when the best anchor's
    score (sigmoid) is below it, the observation is taken to lie outside every anchor's
    support and that row is sampled in full (``fallback`` sampler, ``fallback_steps``)."""

    name = "truncated"
    process_kinds = ("gaussian",)
    fixed_levels = False  # anchors and fallback rows run at different levels
    # planned (dp/deploy): the anchored path is one plan over batch x anchors rows; the fallback, whose rows
    # are known only after the scores, is a second plan that the caller runs when a row needs it
    plannable = True

    def __init__(self, steps: int = 2, level: float = 0.008, fallback_score: float = 0.05,
                 fallback: str = "ddim", fallback_steps: int = 10):
        if steps < 1:
            raise ConfigError(f"truncated: steps must be >= 1, got {steps}.")
        if not 0 < level <= 1:
            raise ConfigError(f"truncated: level must be in (0, 1], got {level}.")
        if not 0 <= fallback_score <= 1:
            raise ConfigError(f"truncated: fallback_score must be in [0, 1], got {fallback_score}.")
        self.steps, self.level, self.fallback_score = int(steps), float(level), float(fallback_score)
        self.base = gaussian_sampler("ddim", 1)
        self.fallback = gaussian_sampler(fallback, fallback_steps)
        self.fallbacks = 0  # rows sampled in full since construction (reported by evaluations)
        self.rows = 0
        self.anchor_count = 0  # the policy's anchors (set by ``check``): planned rows per observation

    def check(self, policy) -> None:
        if "anchors" not in getattr(policy, "plugins", {}):
            raise ConfigError("sampler 'truncated' needs a policy trained with anchors (policy.anchors.count > 0).")
        self.anchor_count = int(policy.plugins["anchors"].anchors.shape[0])

    def reset(self) -> None:
        """Nothing per episode (the fallback counters run for the sampler's life)."""

    def generate(self, ctx) -> torch.Tensor:
        return ctx.plugin("anchors").sample(ctx, self)

    def levels(self, device=None) -> torch.Tensor:
        """[steps + 1] from ``level`` down to 0."""
        return torch.linspace(self.level, 0.0, self.steps + 1, device=device)

    def plan_calls(self, process, batch: int, length: int, device=None, first: bool = True,
                   layout=None) -> tuple:
        """The anchored path planned: every anchor for each of ``batch`` observations (``batch`` x
        ``anchor_count`` rows of ``length``), ``steps`` DDIM calls from ``level``. -> (plan, call levels)."""
        grid = self.levels(device)
        rows = batch * self.anchor_count
        return self.base.plan(process, (rows, length), device, levels=grid), self.base.call_levels(process, grid)
