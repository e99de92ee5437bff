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

Expert caching (MoDE's inference trick): for a fixed sampler the level of every network
call is known in advance, so ``build_cache(level_embs)`` routes each call once and fuses
the chosen experts (and the shared one) into one wide SwiGLU per call:

    gate/up rows of experts e1..ek stacked  -> w_in  [2 * k * hidden, D]
    down columns scaled by the route weights -> w_out [D, k * hidden]

``forward(x, level_emb, step=i)`` then runs call i's fused MLP: two matmuls, no router,
no gather. The cache is keyed by the call's index, not by the level's value.
"""
from __future__ import annotations

from typing import NamedTuple

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


class FusedExperts(NamedTuple):
    """One network call's experts as a single SwiGLU: gate rows, then up rows, in ``w_in``."""

    w_in: torch.Tensor  # [2 * H, D]
    b_in: torch.Tensor  # [2 * H]
    w_out: torch.Tensor  # [D, H], route weights folded in
    b_out: torch.Tensor  # [D]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(x, self.w_in, self.b_in).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, self.w_out, self.b_out)


def fuse_swiglus(experts: list[SwiGLU], weights: list[float]) -> FusedExperts:
    """sum_i weights[i] * experts[i](x) as one SwiGLU of the concatenated hidden units."""
    h = [e.down.in_features for e in experts]
    gates = [e.gate_up.weight[:n] for e, n in zip(experts, h)]
    ups = [e.gate_up.weight[n:] for e, n in zip(experts, h)]
    w_in = torch.cat(gates + ups)
    b_in = torch.cat([e.gate_up.bias[:n] for e, n in zip(experts, h)] + [e.gate_up.bias[n:] for e, n in zip(experts, h)])
    w_out = torch.cat([w * e.down.weight for e, w in zip(experts, weights)], dim=1)
    b_out = sum(w * e.down.bias for e, w in zip(experts, weights))
    return FusedExperts(w_in.detach().clone(), b_in.detach().clone(), w_out.detach().clone(), b_out.detach().clone())


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
        self.step_cache: dict[int, FusedExperts] = {}

    def build_cache(self, level_embs: torch.Tensor, keys: list[int] | None = None) -> None:
        """Route each network call once and fuse its experts. level_embs: [C, D], the level
        embedding of each call (one level per call); keys: the calls' ``step`` values
        (default 0..C-1). Replaces any previous cache."""
        keys = list(range(level_embs.shape[0])) if keys is None else list(keys)
        with torch.no_grad():
            gates = self.router(level_embs).float().softmax(-1)
            top = gates.topk(self.top_k, dim=-1)
            weights = top.values / top.values.sum(-1, keepdim=True)
            self.step_cache = {}
            for i in range(level_embs.shape[0]):
                experts = [self.experts[int(e)] for e in top.indices[i]]
                w = [float(v) for v in weights[i]]
                if self.shared is not None:
                    experts, w = experts + [self.shared], w + [1.0]
                self.step_cache[keys[i]] = fuse_swiglus(experts, w)

    def clear_cache(self) -> None:
        self.step_cache = {}

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

    def forward(self, x: torch.Tensor, level_emb: torch.Tensor, step: int | None = None) -> torch.Tensor:
        """x [B, N, D], level_emb [B, N or 1, D] -> [B, N, D]. ``step``: index of the network
        call within a prediction; with a cache built for it (inference), the fused experts run."""
        if step is not None and not self.training:
            fused = self.step_cache.get(step)
            if fused is not None:
                return fused(x)
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
    """A DiT ``ffn`` factory: (dim, hidden, layer) -> NoiseRoutedMoE whose experts each have
    the parameter count of the dense MLP (hidden units 2/3 of ``hidden``)."""

    def factory(dim: int, hidden: int, layer: int) -> NoiseRoutedMoE:
        # a SwiGLU of 2/3 the hidden width has the parameters of the GELU MLP it replaces (LLaMA's rule)
        return NoiseRoutedMoE(dim, max(1, 2 * hidden // 3), num_experts, top_k, shared_expert)

    return factory
