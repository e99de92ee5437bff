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

    gate/up rows of experts e1..ek stacked  -> w_in  [k * 2 * hidden, D]
    down columns of e1..ek side by side     -> w_out [D, k * hidden]
    route weight of each expert             -> scale [k, 1], applied to its hidden units

``forward(x, level_emb, step=i)`` then runs call i's fused MLP: two matmuls, no router,
no gather. The cache is keyed by the call's index, not by the level's value. The stacked
weights of every call are windows of one ``ExpertBank`` per layer, whose slot order makes
each call's experts contiguous (``contiguous_order``), so the calls share their weights.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dp.core.layers import SwiGLU, swiglu_hidden


class FusedExperts(NamedTuple):
    """One network call's experts as a single SwiGLU over ``n`` consecutive slots of an
    ``ExpertBank``; ``scale`` holds each slot's route weight."""

    w_in: torch.Tensor  # [n * 2 * H, D]: per slot, its gate rows then its up rows
    b_in: torch.Tensor  # [n * 2 * H]
    w_out: torch.Tensor  # [D, n * H] (a column window of the bank's down weights)
    scale: torch.Tensor  # [n, 1]
    b_out: torch.Tensor  # [D], the route-weighted sum of the experts' output biases

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., D] -> [..., D]. Few ops, because at batch 1 each costs more than its
        arithmetic: one view and one unbind split gate from up (on MoDE's DDIM-10 benchmark
        0.4-0.5 ms per prediction less than unflatten + two selects + flatten)."""
        lead = x.shape[:-1]
        gate, up = F.linear(x, self.w_in, self.b_in).view(*lead, self.scale.shape[0], 2, -1).unbind(-2)
        g = F.silu(gate).mul_(up).mul_(self.scale)  # [..., n, H]; in place: inference only, no autograd here
        return F.linear(g.view(*lead, -1), self.w_out, self.b_out)


def _is_window(seq: list[int], group: tuple[int, ...]) -> bool:
    n = len(group)
    return any(set(seq[i:i + n]) == set(group) for i in range(len(seq) - n + 1))


def _overlap(part: list[int], group: tuple[int, ...]) -> int:
    """How many experts of ``part`` (read from its outer end) are distinct members of group."""
    k = 0
    while k < min(len(part), len(group)) and part[k] in group and part[k] not in part[:k]:
        k += 1
    return k


def contiguous_order(groups: list[tuple[int, ...]]) -> list[int]:
    """A sequence of expert indices in which every group is a contiguous run (in any order).
    Greedy: start from the commonest group, then repeatedly attach the group that overlaps
    most with either end of the sequence; an expert repeats only where that fails.
    E.g. [(0, 2), (2, 3), (1, 3)] -> [0, 2, 3, 1]."""
    remaining = sorted(set(groups), key=lambda g: (-groups.count(g), g))
    seq = list(remaining.pop(0))
    while remaining:
        remaining = [g for g in remaining if not _is_window(seq, g)]
        if not remaining:
            break
        tails = [(_overlap(seq[::-1], g), -i, g, "tail") for i, g in enumerate(remaining)]
        heads = [(_overlap(seq, g), -i, g, "head") for i, g in enumerate(remaining)]
        k, _, g, end = max(tails + heads)
        remaining.remove(g)
        later = [e for r in remaining for e in r]
        if end == "tail":
            fresh = sorted((e for e in g if e not in seq[len(seq) - k:]), key=later.count)  # commonest outermost
            seq = seq + fresh
        else:
            fresh = sorted((e for e in g if e not in seq[:k]), key=lambda e: -later.count(e))
            seq = fresh + seq
    return seq


class ExpertBank:
    """A layer's experts side by side in ``order`` (slots), so that each cached call's chosen
    experts are one contiguous window and every call reads views of the same weights.

    At batch 1 a matmul's cost is reading its weights: one bank per layer stays in the CPU's
    cache where a stacked copy per call (40 for DDIM-10 x 4 layers) does not (2x slower per
    call, measured). Detached copies; all experts must have one hidden width."""

    def __init__(self, experts: list[SwiGLU], order: list[int]):
        widths = {e.down.in_features for e in experts}
        if len(widths) != 1:
            raise ValueError(f"ExpertBank needs experts of one hidden width, got {sorted(widths)}.")
        self.order, self.hidden = list(order), widths.pop()
        with torch.no_grad():
            slots = [experts[i] for i in order]
            self.w_in = torch.cat([e.gate_up.weight for e in slots]).clone()  # gate_up is [gate; up] per expert
            self.b_in = torch.cat([e.gate_up.bias for e in slots]).clone()
            self.w_out = torch.cat([e.down.weight for e in slots], dim=1).clone()
            self.b_down = torch.stack([e.down.bias for e in experts]).clone()  # by expert index

    def window(self, chosen: dict[int, float]) -> FusedExperts:
        """The fused call for experts ``chosen`` (index -> route weight), which must be a
        contiguous window of the bank's slots."""
        n, h = len(chosen), self.hidden
        for start in range(len(self.order) - n + 1):
            if set(self.order[start:start + n]) == set(chosen):
                break
        else:
            raise ValueError(f"experts {sorted(chosen)} are not a contiguous window of the bank order {self.order}.")
        slots = self.order[start:start + n]
        scale = torch.tensor([[chosen[e]] for e in slots], dtype=self.w_out.dtype, device=self.w_out.device)
        b_out = sum(w * self.b_down[e] for e, w in chosen.items())
        return FusedExperts(self.w_in[2 * h * start:2 * h * (start + n)], self.b_in[2 * h * start:2 * h * (start + n)],
                            self.w_out[:, h * start:h * (start + n)], scale, b_out)


def fuse_swiglus(experts: list[SwiGLU], weights: list[float]) -> FusedExperts:
    """sum_i weights[i] * experts[i](x) as one SwiGLU of the concatenated hidden units."""
    bank = ExpertBank(experts, list(range(len(experts))))
    return bank.window(dict(enumerate(weights)))


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
            routes = []  # per call: expert index -> route weight (the shared expert is index E, weight 1)
            for i in range(level_embs.shape[0]):
                chosen = {int(e): float(w) for e, w in zip(top.indices[i], weights[i])}
                if self.shared is not None:
                    chosen[self.num_experts] = 1.0
                routes.append(chosen)
            experts = [*self.experts, *([self.shared] if self.shared is not None else [])]
            bank = ExpertBank(experts, contiguous_order([tuple(sorted(r)) for r in routes]))
            self.step_cache = {key: bank.window(r) for key, r in zip(keys, routes)}

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
        return NoiseRoutedMoE(dim, swiglu_hidden(hidden), num_experts, top_k, shared_expert)

    return factory
