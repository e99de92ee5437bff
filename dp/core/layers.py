"""Norms, attention and the dense MLP used by the DiT blocks.

Shapes: tokens [B, N, D]; attention heads split as [B, heads, N, D/heads].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from dp.errors import ConfigError

NORMS = ("layer", "rms")


class RMSNorm(nn.Module):
    """x / rms(x) * weight over the last dim (``F.rms_norm``: one fused kernel; on this 2-core
    Xeon 1.45x faster per call at batch 1 than ``F.normalize(x) * sqrt(dim)``, and a MoDE
    prediction makes ~190 of these calls). ``eps`` bounds the mean square from below."""

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True):
        super().__init__()
        self.shape, self.eps = (dim,), eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.shape, self.weight, self.eps)


def make_norm(kind: str, dim: int, affine: bool = True) -> nn.Module:
    if kind == "layer":
        return nn.LayerNorm(dim, eps=1e-6, elementwise_affine=affine)
    if kind == "rms":
        return RMSNorm(dim, eps=1e-6, affine=affine)
    raise ConfigError(f"norm must be one of {NORMS}, got {kind!r}.")


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: per-token affine from the conditioning vector. All [B, N, D]."""
    return x * (1 + scale) + shift


KV = tuple[torch.Tensor, torch.Tensor]  # keys, values: [B, heads, M, head_dim]


class SelfAttention(nn.Module):
    """Multi-head self-attention over x, optionally also attending to cached prefix K/V."""

    def __init__(self, dim: int, heads: int, qk_norm: bool = False, norm: str = "layer"):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"dim {dim} must be divisible by heads {heads}.")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        head_dim = dim // heads
        self.q_norm = make_norm(norm, head_dim) if qk_norm else nn.Identity()
        self.k_norm = make_norm(norm, head_dim) if qk_norm else nn.Identity()
        # optional ``kernel(q, k, v, mask) -> out`` in place of dense attention (dp/core/attention.py:
        # factorized or sparse video attention); not a module, so not in the state dict
        self.kernel = None

    def forward(self, x: torch.Tensor, prefix_kv: KV | None = None, mask: torch.Tensor | None = None):
        """x [B, N, D] -> (out [B, N, D], (k, v) of x for callers that cache them)."""
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        q, k = self.q_norm(q), self.k_norm(k)
        own = (k, v)
        if prefix_kv is not None:
            k = torch.cat([prefix_kv[0], k], dim=2)
            v = torch.cat([prefix_kv[1], v], dim=2)
        if self.kernel is not None:
            if prefix_kv is not None:
                raise ConfigError("a video attention kernel runs on the clip's own tokens; this model has prefix "
                                  "condition tokens (use cond_mode cross, or attention=full).")
            out = self.kernel(q, k, v, mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(rearrange(out, "b h n d -> b n (h d)")), own


class CrossAttention(nn.Module):
    """Queries from x, keys/values from condition tokens; K/V computed once per prediction."""

    def __init__(self, dim: int, heads: int, qk_norm: bool = False, norm: str = "layer"):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        head_dim = dim // heads
        self.q_norm = make_norm(norm, head_dim) if qk_norm else nn.Identity()
        self.k_norm = make_norm(norm, head_dim) if qk_norm else nn.Identity()

    def keys_values(self, cond: torch.Tensor) -> KV:
        """cond [B, M, D] -> (k, v) [B, heads, M, head_dim]."""
        k, v = rearrange(self.kv(cond), "b m (two h d) -> two b h m d", two=2, h=self.heads)
        return self.k_norm(k), v

    def forward(self, x: torch.Tensor, kv: KV, mask: torch.Tensor | None = None) -> torch.Tensor:
        q = self.q_norm(rearrange(self.q(x), "b n (h d) -> b h n d", h=self.heads))
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class MLP(nn.Module):
    """Dense GELU feed-forward (tanh approximation, as DiT's own blocks use; on a CPU at
    batch 1 the exact erf GELU costs 1.5x as much). ``level_emb`` is accepted (and ignored)
    so it fills the same ``ffn`` slot as a mixture of experts, whose router reads the level
    embedding."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, level_emb: torch.Tensor | None = None, step: int | None = None) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def swiglu_hidden(hidden: int) -> int:
    """The SwiGLU width with the parameters of a GELU MLP of width ``hidden``: 2/3 of it
    (LLaMA's rule), since a SwiGLU has three matrices where the MLP has two."""
    return max(1, 2 * hidden // 3)


class SwiGLU(nn.Module):
    """x [..., D] -> [..., D]: down(silu(gate(x)) * up(x)). MoDE's expert, and its dense
    block's MLP; fills the DiT block's ``ffn`` slot like ``MLP``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden)  # rows: gate, then up
        self.down = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, level_emb: torch.Tensor | None = None, step: int | None = None) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)
