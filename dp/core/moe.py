"""Mixture-of-experts feed-forward routed by the noise level only (MoDE, Reuss et al.).

    dit = DiT(dim, depth, heads, ffn=moe_ffn(num_experts=4, top_k=2))
    y = block.ffn(x, level_emb)      # x [B, N, D], level_emb [B, N or 1, D] -> [B, N, D]

The router reads the per-token level embedding, never the token content, so for a fixed
sampler schedule the routes are fixed and can be computed once (expert caching, later).
Experts are SwiGLU MLPs. In training the k experts are drawn from the router's
distribution without replacement; at inference the top-k are taken. Either way the chosen
experts' weights are the router probabilities renormalised over the k.

After each forward the module keeps ``aux_loss``: Switch-style load balance,
``E * sum_e mean_tokens(p_e) * frac_e``, where ``frac_e`` is the share of the k*tokens
assignments that went to expert e. It is 1 when routing is uniform. It also keeps ``last_probs``
[tokens, E] and ``last_gates`` [tokens, E] (detached) for logging usage per level bucket.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    """x [..., D] -> [..., D]: down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden)
        self.down = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class NoiseRoutedMoE(nn.Module):
    """Sparse experts chosen from the level embedding; fills the DiT block's ``ffn`` slot."""

    def __init__(self, dim: int, hidden: int, num_experts: int = 4, top_k: int = 2, shared_expert: bool = False):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}.")
        self.num_experts, self.top_k = num_experts, top_k
        self.router = nn.Linear(dim, num_experts)
        self.experts = nn.ModuleList(SwiGLU(dim, hidden) for _ in range(num_experts))
        self.shared = SwiGLU(dim, hidden) if shared_expert else None
        self.aux_loss: torch.Tensor | None = None
        self.last_probs: torch.Tensor | None = None
        self.last_gates: torch.Tensor | None = None

    def route(self, level_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """level_emb [B, N or 1, D] -> (gates, probs), each [B, N or 1, E]; gates are zero
        except for the k chosen experts, whose weights sum to 1."""
        probs = self.router(level_emb).float().softmax(dim=-1)
        if self.training:
            flat = probs.detach().reshape(-1, self.num_experts)
            idx = torch.multinomial(flat, self.top_k, replacement=False).reshape(*probs.shape[:-1], self.top_k)
        else:
            idx = probs.topk(self.top_k, dim=-1).indices
        chosen = probs.gather(-1, idx)
        gates = torch.zeros_like(probs).scatter(-1, idx, chosen / chosen.sum(-1, keepdim=True))
        return gates, probs

    def forward(self, x: torch.Tensor, level_emb: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        gates, probs = self.route(level_emb)
        gates = gates.expand(b, n, -1).reshape(b * n, -1)
        probs = probs.expand(b, n, -1).reshape(b * n, -1)
        flat = x.reshape(b * n, d)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows = gates[:, e].nonzero(as_tuple=True)[0]  # tokens routed to expert e
            if rows.numel():
                out.index_add_(0, rows, expert(flat[rows]) * gates[rows, e : e + 1].to(x.dtype))
        if self.shared is not None:
            out = out + self.shared(flat)
        frac = (gates > 0).float().mean(0) / self.top_k  # share of assignments per expert, sums to 1
        self.aux_loss = self.num_experts * (probs.mean(0) * frac).sum()
        self.last_probs, self.last_gates = probs.detach(), gates.detach()
        return out.reshape(b, n, d)


def moe_ffn(num_experts: int = 4, top_k: int = 2, shared_expert: bool = False):
    """A DiT ``ffn`` factory: (dim, hidden, layer) -> NoiseRoutedMoE."""

    def factory(dim: int, hidden: int, layer: int) -> NoiseRoutedMoE:
        return NoiseRoutedMoE(dim, hidden, num_experts, top_k, shared_expert)

    return factory
