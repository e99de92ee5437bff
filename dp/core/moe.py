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
weights of every call are windows of one ``ExpertBank`` per layer, each expert stored once,
in the order (``bank_order``) under which the most calls' experts are contiguous; a call
whose experts are not runs as the sum of its runs (``ExpertSum``). The calls share weights.
"""
from __future__ import annotations

from itertools import permutations
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dp.core.layers import SwiGLU, swiglu_hidden
from dp.core.weights import weights_key
from dp.errors import ConfigError


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


def _runs(order: list[int], group) -> list[list[int]]:
    """The experts of ``group`` as maximal runs of consecutive slots of ``order``."""
    slots = sorted(order.index(e) for e in group)
    runs = [[slots[0]]]
    for s in slots[1:]:
        if s == runs[-1][-1] + 1:
            runs[-1].append(s)
        else:
            runs.append([s])
    return [[order[s] for s in run] for run in runs]


def bank_order(groups: list[tuple[int, ...]], num: int, exhaustive_up_to: int = 6) -> list[int]:
    """An order of experts 0..num-1 (each once) under which as many of the calls' expert
    ``groups`` as possible are one contiguous run; the rest run as a few runs (``_runs``).

    All orders are tried up to ``exhaustive_up_to`` experts (6! = 720, ~20 ms a layer;
    MoDE's 4 experts and a shared one are 5); beyond that, experts are placed by first use.
    E.g. [(0, 2), (2, 3), (1, 3)] -> [0, 2, 3, 1]."""
    first_use = list(dict.fromkeys([e for g in groups for e in g] + list(range(num))))
    if num > exhaustive_up_to:
        return first_use
    counts = {g: groups.count(g) for g in set(groups)}
    # fewest extra runs over all calls; ties go to the order closest to first use
    return list(min(permutations(first_use), key=lambda o: sum(n * (len(_runs(list(o), g)) - 1)
                                                              for g, n in counts.items())))


class ExpertSum(NamedTuple):
    """A call whose experts are not one run of the bank: the sum of its runs' fused calls."""

    parts: tuple[FusedExperts, ...]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.parts[0](x)
        for part in self.parts[1:]:
            out = out.add_(part(x))
        return out


class ExpertBank:
    """A layer's experts side by side, each once, in ``order`` (a permutation; ``bank_order``),
    so that a cached call's chosen experts are one contiguous window (or a few) and every
    call reads views of the same weights.

    At batch 1 a matmul's cost is reading its weights: one bank per layer stays in the CPU's
    cache where a stacked copy per call (40 for DDIM-10 x 4 layers) does not (2x slower per
    call, measured). Repeating an expert in the bank so that every call is one window made
    the bank up to 1.5x the experts (28 MB read per prediction against 21 MB for the router
    path, random weights); a call split in two runs costs a few more ops instead.
    Detached copies; all experts must have one hidden width."""

    def __init__(self, experts: list[SwiGLU], order: list[int]):
        widths = {e.down.in_features for e in experts}
        if len(widths) != 1:
            raise ValueError(f"ExpertBank needs experts of one hidden width, got {sorted(widths)}.")
        if sorted(order) != list(range(len(experts))):
            raise ValueError(f"order must list each of the {len(experts)} experts once, got {order}.")
        self.order, self.hidden = list(order), widths.pop()
        self.slot = {e: i for i, e in enumerate(self.order)}
        with torch.no_grad():
            slots = [experts[i] for i in order]
            self.w_in = torch.cat([e.gate_up.weight for e in slots]).clone()  # gate_up is [gate; up] per expert
            self.b_in = torch.cat([e.gate_up.bias for e in slots]).clone()
            self.w_out = torch.cat([e.down.weight for e in slots], dim=1).clone()
            self.b_down = torch.stack([e.down.bias for e in experts]).clone()  # by expert index

    def fused(self, chosen: dict[int, float]) -> FusedExperts | ExpertSum:
        """The cached call for experts ``chosen`` (index -> route weight): one fused SwiGLU
        per run of consecutive slots they occupy."""
        parts = [self._window({e: chosen[e] for e in run}) for run in _runs(self.order, chosen)]
        return parts[0] if len(parts) == 1 else ExpertSum(tuple(parts))

    def _window(self, chosen: dict[int, float]) -> FusedExperts:
        """Experts ``chosen`` occupying consecutive slots, as one SwiGLU over views of the bank."""
        n, h = len(chosen), self.hidden
        start = min(self.slot[e] for e in chosen)
        slots = self.order[start:start + n]
        scale = torch.tensor([[chosen[e]] for e in slots], dtype=self.w_out.dtype, device=self.w_out.device)
        b_out = sum(w * self.b_down[e] for e, w in chosen.items())
        return FusedExperts(self.w_in[2 * h * start:2 * h * (start + n)], self.b_in[2 * h * start:2 * h * (start + n)],
                            self.w_out[:, h * start:h * (start + n)], scale, b_out)


def fuse_swiglus(experts: list[SwiGLU], weights: list[float]) -> FusedExperts:
    """sum_i weights[i] * experts[i](x) as one SwiGLU of the concatenated hidden units."""
    return ExpertBank(experts, list(range(len(experts)))).fused(dict(enumerate(weights)))


class NoiseRoutedMoE(nn.Module):
    """Sparse experts chosen from the level embedding; fills the DiT block's ``ffn`` slot."""

    def __init__(self, dim: int, hidden: int, num_experts: int = 4, top_k: int = 2, shared_expert: bool = False):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ConfigError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}.")
        self.num_experts, self.top_k = num_experts, top_k
        self.router = nn.Linear(dim, num_experts)
        self.experts = nn.ModuleList(SwiGLU(dim, hidden) for _ in range(num_experts))
        self.shared = SwiGLU(dim, hidden) if shared_expert else None
        self.aux_loss: torch.Tensor | None = None
        self.last_probs: torch.Tensor | None = None
        self.last_gates: torch.Tensor | None = None
        self.step_cache: dict[int, FusedExperts | ExpertSum] = {}

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
            bank = ExpertBank(experts, bank_order([tuple(sorted(r)) for r in routes], len(experts)))
            self.step_cache = {key: bank.fused(r) for key, r in zip(keys, routes)}

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


LEVEL_BUCKETS = 4  # router statistics are reported for levels in [0, .25), [.25, .5), ...


class RouteCache:
    """Expert caching at inference (MoDE) for the routed ffns of one DiT.

    Routes depend only on the level embedding, so for a sampler whose call levels are fixed
    (``sampler.fixed_levels``) every call's experts are chosen and fused once: ``prepare``
    routes each call and keys the fused experts by call index; ``on_grid(i, level)`` says
    whether call i sits where the sampler said (else the router runs). The cache is keyed by
    the sampler, its step count and the weights it was built from, and rebuilt when they change.
    Not a module: it holds no parameters of its own.
    """

    def __init__(self, dit, prefix_step: int):
        self.dit, self.prefix_step = dit, prefix_step
        self.enabled = True  # False: always the router path (the benchmark's comparison)
        self.levels: list[float] | None = None
        self._built_for: tuple | None = None
        self._params: list[torch.Tensor] | None = None

    def ffns(self) -> list[NoiseRoutedMoE]:
        return [blk.ffn for blk in self.dit.blocks if isinstance(blk.ffn, NoiseRoutedMoE)]

    def routed(self) -> list[nn.Module]:
        """Every module whose route depends on the level only: MoE ffns and Switch-DiT masks
        (each has ``build_cache(level_embs, keys)`` and ``clear_cache()``)."""
        return [*self.ffns(), *(blk.switch for blk in self.dit.blocks if getattr(blk, "switch", None) is not None)]

    def applies(self, sampler) -> bool:
        return self.enabled and bool(self.routed()) and getattr(sampler, "fixed_levels", False)

    def _key(self, sampler) -> tuple:
        """What the routes depend on: the sampler, the level embedding and the ffn weights. The
        parameters are listed once per cache (walking the module tree cost 0.07 ms a prediction)."""
        if self._params is None:
            self._params = [*self.dit.level_emb.parameters(), *(p for f in self.routed() for p in f.parameters())]
        return (sampler.name, sampler.steps, weights_key(self._params))

    def ensure(self, sampler, process, device) -> None:
        """Build the cache for ``sampler`` unless it is current."""
        if self._built_for != self._key(sampler):
            self.prepare(sampler, process, device)

    def prepare(self, sampler, process, device) -> None:
        levels = sampler.call_levels(process)
        with torch.no_grad():
            emb = self.dit.level_emb(torch.tensor([[0.0, *levels]], device=device))[0]  # [1 + C, D]
        for module in self.routed():
            module.build_cache(emb, keys=[self.prefix_step, *range(len(levels))])
        self.levels = levels
        self._built_for = self._key(sampler)

    def on_grid(self, i: int, level: torch.Tensor) -> bool:
        return self.levels is not None and i < len(self.levels) and bool((level == self.levels[i]).all())

    def clear(self) -> None:
        for module in self.routed():
            module.clear_cache()
        self.levels, self._built_for, self._params = None, None, None


def balance_loss(ffns: list[NoiseRoutedMoE]) -> torch.Tensor:
    """The load-balancing loss of the last forward pass, averaged over layers (1 when uniform)."""
    return torch.stack([f.aux_loss for f in ffns]).mean()


@torch.no_grad()
def router_stats(ffns: list[NoiseRoutedMoE], levels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Router entropy and expert usage per level bucket, averaged over layers, from the last
    forward pass. levels: [B], one level per sample. Keys ``router/entropy_b{j}`` and
    ``router/usage_b{j}_e{e}`` (share of the k assignments that went to expert e)."""
    b = levels.shape[0]
    probs = torch.stack([f.last_probs.reshape(b, -1, f.num_experts).mean(1) for f in ffns])  # [L, B, E]
    usage = torch.stack([(f.last_gates.reshape(b, -1, f.num_experts) > 0).float().mean(1) / f.top_k
                         for f in ffns])  # [L, B, E]
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)  # [L, B]
    bucket = (levels * LEVEL_BUCKETS).long().clamp(0, LEVEL_BUCKETS - 1)
    stats = {}
    for j in range(LEVEL_BUCKETS):
        rows = bucket == j
        if rows.any():
            stats[f"router/entropy_b{j}"] = entropy[:, rows].mean()
            for e, u in enumerate(usage[:, rows].mean((0, 1))):
                stats[f"router/usage_b{j}_e{e}"] = u
    return stats


def active_parameters(module: nn.Module) -> int:
    """Parameters of ``module`` one token passes through at inference: all but the experts it
    is not routed to (top_k of num_experts per routed layer; routers and shared experts count)."""
    total = sum(p.numel() for p in module.parameters())
    idle = 0
    for f in module.modules():
        if isinstance(f, NoiseRoutedMoE):
            idle += (f.num_experts - f.top_k) * sum(p.numel() for p in f.experts[0].parameters())
    return total - idle
