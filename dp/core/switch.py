"""Switch-DiT (Park et al.): every noise level is a task; a level-gated mask chooses each block's path.

Per block, a gate reads the level embedding only (never the tokens): a softmax over E experts,
top-k kept with their probabilities as weights. The chosen experts (linear maps, zero-initialised)
turn the block's input into a per-channel mask::

    mask = 1 + sum_{e in top-k} p_e * (W_e x + b_e)            # a fresh model: mask = 1
    y = block(x * mask) + (1 - mask) * x                         # (the official DiTBlock's routed path)

so the block's own weights are the path every level shares and the mask carves a level-specific
one out of it. Like MoDE's, the routes depend on the level only: for a fixed sampler every
call's experts are fused once into one linear map (``build_cache``), keyed by call index.

Diffusion prior loss (``DiffusionPrior``), as the official ``models/DiT/models.py``:

- units: the gates of all L layers side by side, U = L * E; a level's gate vector
  g(t) = concat_l softmax_l(t) / L sums to 1;
- prior: a table [T, U] with, for level row t, a window of w = round(U * k / E) ones starting at
  round((t / (T - 1)) ** alpha * (U - w)) (alpha = 4): nearby levels overlap, distant ones do not;
- matching: the top-k indicator of every table level's gates, Q [T, U], is matched to the
  prior's columns by ``scipy.optimize.linear_sum_assignment`` on the cost
  C[i, j] = sum_t |Q[t, i] - prior[t, j]| (columns shuffled first, so ties break at random);
- loss: the Jensen-Shannon divergence between each sample's g(t) and its level's matched prior
  row normalised to sum 1, JSD(a, b) = (KL(a || m) + KL(b || m)) / 2, m = (a + b) / 2, averaged
  over the batch and weighted by ``prior_weight`` (w_JSD).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dp.errors import ConfigError


class LevelGatedMask(nn.Module):
    """x [B, N, D], level_emb [B, N or 1, D] -> the block's channel mask [B, N, D]."""

    def __init__(self, dim: int, num_experts: int = 3, top_k: int = 2):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ConfigError(f"switch.top_k must be in [1, num_experts={num_experts}], got {top_k}.")
        self.num_experts, self.top_k = num_experts, top_k
        self.gate = nn.Sequential(nn.SiLU(), nn.Linear(dim, num_experts))
        self.weight = nn.Parameter(torch.zeros(num_experts, dim, dim))  # experts, zero-initialised
        self.bias = nn.Parameter(torch.zeros(num_experts, dim))
        self.last_probs: torch.Tensor | None = None  # [B, N or 1, E], kept for the prior loss and statistics
        self.last_gates: torch.Tensor | None = None
        self.step_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def route(self, level_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """level_emb [..., D] -> (gates, probs) [..., E]: gates are the top-k probabilities, zero elsewhere."""
        probs = self.gate(level_emb).float().softmax(-1)
        top = probs.topk(self.top_k, dim=-1)
        return torch.zeros_like(probs).scatter(-1, top.indices, top.values), probs

    def forward(self, x: torch.Tensor, level_emb: torch.Tensor, step: int | None = None) -> torch.Tensor:
        if step is not None and not self.training and step in self.step_cache:
            w, b = self.step_cache[step]
            return 1 + F.linear(x, w, b)
        gates, probs = self.route(level_emb)
        self.last_probs, self.last_gates = probs, gates.detach()
        gates = gates.to(x.dtype)
        if gates.shape[1] == 1:  # one level per sample (or one for all): fuse the chosen experts
            w, b = torch.einsum("be,eod->bod", gates[:, 0], self.weight), gates[:, 0] @ self.bias
            if w.shape[0] == 1:
                return 1 + F.linear(x, w[0], b[0])
            return 1 + torch.baddbmm(b[:, None], x, w.transpose(1, 2))
        out = torch.einsum("bnd,eod->bneo", x, self.weight) + self.bias  # per-token levels: every expert
        return 1 + (gates[..., None] * out).sum(-2)

    @torch.no_grad()
    def build_cache(self, level_embs: torch.Tensor, keys: list[int] | None = None) -> None:
        """Route each network call once (level_embs [C, D], one level per call) and fuse its
        experts into one linear map, keyed by ``keys`` (default 0..C-1)."""
        keys = list(range(level_embs.shape[0])) if keys is None else list(keys)
        gates, _ = self.route(level_embs)
        gates = gates.to(self.weight.dtype)
        self.step_cache = {key: (torch.einsum("e,eod->od", g, self.weight), g @ self.bias)
                           for key, g in zip(keys, gates)}

    def clear_cache(self) -> None:
        self.step_cache = {}


def sliding_prior(levels: int, units: int, width: int, alpha: float = 4.0) -> torch.Tensor:
    """[levels, units] 0/1: row t has ``width`` ones from round((t / (levels - 1)) ** alpha * (units - width))."""
    start = np.round(np.linspace(0.0, 1.0, levels) ** alpha * (units - width)).astype(np.int64)
    prior = torch.zeros(levels, units)
    for t, s in enumerate(start):
        prior[t, s : s + width] = 1.0
    return prior


def jensen_shannon(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Rows of distributions a, b [B, U] -> mean JSD over rows."""
    m = (a + b) / 2
    kl = lambda p: (p * ((p + eps).log() - (m + eps).log())).sum(-1)  # noqa: E731
    return ((kl(a) + kl(b)) / 2).mean()


class DiffusionPrior(nn.Module):
    """Switch-DiT's diffusion prior loss over a DiT's ``LevelGatedMask`` layers (module docstring)."""

    def __init__(self, depth: int, num_experts: int, top_k: int, levels: int = 1000, alpha: float = 4.0):
        super().__init__()
        self.depth, self.levels = depth, levels
        units = depth * num_experts
        self.register_buffer("prior", sliding_prior(levels, units, round(units * top_k / num_experts), alpha),
                             persistent=False)
        self.generator = torch.Generator().manual_seed(0)

    def rows(self, level: torch.Tensor) -> torch.Tensor:
        """Levels in [0, 1] -> prior table rows."""
        return (level.float() * (self.levels - 1)).round().long().clamp(0, self.levels - 1)

    def loss(self, masks: list[LevelGatedMask], level_emb_table: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """masks: the blocks' gates after a forward pass (``last_probs`` of the batch);
        level_emb_table [T, D]: the level embedding of every table level; level [B]: each
        sample's level. -> the weighted-free JSD term (a scalar)."""
        with torch.no_grad():
            quantized = torch.cat([m.route(level_emb_table)[0] > 0 for m in masks], dim=1).float()  # [T, U]
            gate_order = torch.randperm(quantized.shape[1], generator=self.generator)
            prior_order = torch.randperm(quantized.shape[1], generator=self.generator)
            prior = self.prior.to(quantized)[:, prior_order]
            cost = (quantized[:, gate_order, None] - prior[:, None]).abs().sum(0)  # [U, U]
            from scipy.optimize import linear_sum_assignment

            _, match = linear_sum_assignment(cost.cpu().numpy())
        probs = torch.cat([m.last_probs[:, 0] for m in masks], dim=1)[:, gate_order] / self.depth  # [B, U]
        target = prior[self.rows(level)][:, torch.as_tensor(match, device=prior.device)]
        return jensen_shannon(probs, target / target.sum(-1, keepdim=True))


@torch.no_grad()
def switch_stats(masks: list[LevelGatedMask], levels: torch.Tensor, buckets: int = 4) -> dict[str, torch.Tensor]:
    """Expert usage (share of top-k picks) per level bucket, averaged over layers: keys
    ``switch/usage_b{j}_e{e}``. levels [B], one per sample."""
    usage = torch.stack([(m.last_gates[:, 0] > 0).float() / m.top_k for m in masks]).mean(0)  # [B, E]
    bucket = (levels * buckets).long().clamp(0, buckets - 1)
    stats = {}
    for j in range(buckets):
        rows = bucket == j
        if rows.any():
            for e, u in enumerate(usage[rows].mean(0)):
                stats[f"switch/usage_b{j}_e{e}"] = u
    return stats
