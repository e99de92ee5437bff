"""DiT: the Transformer denoiser every dp policy shares. Each token carries its own level.

    dit = DiT(dim=256, depth=8, heads=4, cond_mode="prefix")
    cache = dit.encode_condition(cond, context)   # once per prediction
    for each denoising step:
        out = dit(x, level, cache=cache)          # x [B, N, D], level [B, N] -> [B, N, D]

Block (adaLN-Zero, as DiT's ``models.py``)::

    c = LevelEmbedding(level) + context                    # per token, [B, N, D]
    x = x + gate1 * SelfAttn(modulate(norm1(x), shift1, scale1) ; prefix K/V)
    x = x + CrossAttn(norm_x(x), cond K/V)                 # cond_mode cross | alternating
    x = x + gate2 * FFN(modulate(norm2(x), shift2, scale2), level_emb)

The adaLN projections, the cross-attention output and the final modulation are
zero-initialised: a fresh block is the identity on its residual path.

``level_cond="add"`` is MoDE's block instead (``modedit.py``): no adaLN; c is added to
every token before self-attention and the ffn reads the pre-normed residual::

    x = x + SelfAttn(norm1(x) + c ; prefix K/V)
    x = x + FFN(norm2(x), level_emb)                       # the official code's block
                                                           # overwrites x with norm2(x); not here
``level_cond="token"`` is RDT's block: nothing level-dependent inside the block; the level
reaches the tokens only through the level token (``level_token=True`` required)::

    x = x + SelfAttn(norm1(x) ; prefix K/V)                # RMSNorm + QK-norm in RDT
    x = x + CrossAttn(norm_x(x), cond K/V)
    x = x + FFN(norm2(x))

``level_token=True`` prepends c as a token to the denoised tokens (MoDE's noise token);
it is dropped from the output. The ffn also gets ``step``, the index of the network call
within a prediction (``ConditionCache.step``), which a mixture of experts uses to look up
its cached routes.

Condition modes (``cond`` is what does not change across denoising steps):
- ``prefix``: condition tokens are prepended. They attend only to themselves and are
  modulated by level 0 + context, so their per-layer K/V never depend on x or on the
  step: ``encode_condition`` runs them through the layers once and caches the K/V.
- ``cross``: every layer cross-attends to the condition tokens (K/V cached per layer).
- ``alternating``: ``cond`` is a list of token groups; layer i cross-attends to group
  ``i % len(cond)`` (RDT: language on even layers, images on odd layers).

``cond_mask`` (a bool tensor [B, M] per group, True = a real token) keeps padding (shorter
instructions in a batch) out of every attention that reads condition tokens. Without it, or
when it holds no False, attention runs unmasked, as before.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from dp.core.embeddings import LevelEmbedding
from dp.core.layers import KV, MLP, CrossAttention, SelfAttention, SwiGLU, make_norm, modulate, swiglu_hidden
from dp.core.switch import DiffusionPrior, LevelGatedMask
from dp.errors import ConfigError

COND_MODES = ("prefix", "cross", "alternating")
LEVEL_CONDS = ("adaln", "add", "token")  # adaLN-Zero (DiT) | added (MoDE) | token only (RDT)
PREFIX_STEP = -1  # the ffn's ``step`` in the prefix pass of ``encode_condition`` (level 0)

# ffn factory: (dim, hidden, layer_index) -> module with forward(x, level_emb, step=None)
FFNFactory = Callable[[int, int, int], nn.Module]


def dense_ffn(dim: int, hidden: int, layer: int) -> nn.Module:
    return MLP(dim, hidden)


def swiglu_ffn(dim: int, hidden: int, layer: int) -> nn.Module:
    """A dense SwiGLU with the GELU MLP's parameter count (MoDE's dense block)."""
    return SwiGLU(dim, swiglu_hidden(hidden))


@dataclass
class ConditionCache:
    """What ``encode_condition`` computes once per prediction (per layer)."""

    prefix_kv: list[KV | None] = field(default_factory=list)
    cross_kv: list[KV | None] = field(default_factory=list)
    context: torch.Tensor | None = None  # [B, D]
    # level value -> (level_emb, per-block modulation tuples, final adaLN output), each [B or 1, 1, *]
    level_terms: dict[float, tuple] = field(default_factory=dict)
    step: int | None = None  # index of the current network call (set by the caller, read by the ffn)
    # a planned prediction (``DiT.plan_calls``): the level terms of each network call in call order, and
    # the index of the current call (set by the caller); then no level is read on the host
    uniform_levels: bool = False  # the caller's promise: every call runs at one level on all tokens
    call_terms: list[tuple] | None = None
    call: int = 0
    # attention masks from cond_mask (None: nothing padded): for the prefix, [B, 1, 1, M] keys of the
    # prefix; per layer for cross-attention, [B, 1, 1, M_group]
    prefix_mask: torch.Tensor | None = None
    cross_masks: list[torch.Tensor | None] = field(default_factory=list)

    def repeat(self, n: int) -> "ConditionCache":
        """The cache for a batch repeated ``n`` times along dim 0 (e.g. for several samples), with its
        prepared level terms and a plan's call terms (terms shared by every row, [1, ...], stay as they are)."""
        rep = lambda t: None if t is None else t.repeat_interleave(n, dim=0)  # noqa: E731
        kv = lambda p: None if p is None else (rep(p[0]), rep(p[1]))  # noqa: E731
        rows = None if self.context is None else self.context.shape[0]

        def terms(x):  # the nested tuples/lists of level terms
            if isinstance(x, (tuple, list)):
                return type(x)(terms(t) for t in x)
            return x if x is None or x.shape[0] != rows else rep(x)

        return ConditionCache([kv(p) for p in self.prefix_kv], [kv(p) for p in self.cross_kv], rep(self.context),
                              level_terms={v: terms(t) for v, t in self.level_terms.items()},
                              uniform_levels=self.uniform_levels,
                              call_terms=None if self.call_terms is None else terms(self.call_terms),
                              prefix_mask=rep(self.prefix_mask), cross_masks=[rep(m) for m in self.cross_masks])

    def self_mask(self, n: int) -> torch.Tensor | None:
        """The mask for n denoised tokens attending to [prefix, themselves]: [B, 1, 1, M + n]."""
        if self.prefix_mask is None:
            return None
        own = self.prefix_mask.new_ones(*self.prefix_mask.shape[:3], n)
        return torch.cat([self.prefix_mask, own], dim=-1)


    def level_terms_for(self, level: torch.Tensor):
        """Precomputed terms when every token of every sample sits at one stored level, else None."""
        if self.call_terms is not None:
            return self.call_terms[self.call]
        if not self.level_terms:
            return None
        v = float(level.reshape(-1)[0])
        terms = self.level_terms.get(v)
        if terms is None or not bool((level == v).all()):
            return None
        return terms


def _cat_kv(a: KV | None, b: KV | None) -> KV | None:
    """Two K/V pairs [B, heads, M, d] joined along the sequence (either may be None)."""
    if a is None or b is None:
        return a if b is None else b
    return torch.cat([a[0], b[0]], dim=2), torch.cat([a[1], b[1]], dim=2)


def _key_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """[B, M] bool (True = real) -> [B, 1, 1, M] for scaled_dot_product_attention; None if nothing is padded."""
    if mask is None or bool(mask.all()):
        return None
    return mask[:, None, None, :]

class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: nn.Module, norm: str = "layer", qk_norm: bool = False,
                 cross: bool = False, level_cond: str = "adaln", switch: nn.Module | None = None):
        super().__init__()
        self.switch = switch  # Switch-DiT's level-gated channel mask (dp/core/switch.py), or None
        self.norm1 = make_norm(norm, dim, affine=False)
        self.attn = SelfAttention(dim, heads, qk_norm, norm)
        self.norm2 = make_norm(norm, dim, affine=False)
        self.ffn = ffn
        self.cross = CrossAttention(dim, heads, qk_norm, norm) if cross else None
        self.norm_x = make_norm(norm, dim) if cross else None
        self.cond_norm = make_norm(norm, dim) if cross else None
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim)) if level_cond == "adaln" else None
        self.add_level = level_cond == "add"
        if self.ada is not None:
            nn.init.zeros_(self.ada[1].weight)
            nn.init.zeros_(self.ada[1].bias)
        if self.cross is not None:
            nn.init.zeros_(self.cross.proj.weight)
            nn.init.zeros_(self.cross.proj.bias)

    def modulation(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """adaLN terms from the conditioning vector c [B, N or 1, D]:
        (shift1, 1 + scale1, gate1, shift2, 1 + scale2, gate2), each [B, N or 1, D];
        with ``level_cond="add"``, just (c,)."""
        if self.ada is None:
            return (c,)
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)
        return shift1, 1 + scale1, gate1, shift2, 1 + scale2, gate2

    def forward(self, x, c, level_emb, prefix_kv: KV | None = None, cross_kv: KV | None = None, mask=None,
                terms: tuple | None = None, step: int | None = None, cross_mask=None):
        """x [B, N, D], c and level_emb [B, N or 1, D] -> (x [B, N, D], this layer's self-attention K/V of x).

        ``terms`` is ``self.modulation(c)`` when the caller precomputed it (not ``mod``: torch.export
        reserves that keyword). Each modulation and
        gated residual is one fused ``addcmul``: at batch 1 the per-op cost, not the
        arithmetic, is what a denoising step spends its time on. With a ``switch``, the block
        runs on ``x * m`` and adds back ``(1 - m) * x`` (m: the level-gated channel mask)."""
        if self.switch is None:
            return self._run(x, c, level_emb, prefix_kv, cross_kv, mask, terms, step, cross_mask)
        m = self.switch(x, level_emb, step)
        y, kv = self._run(x * m, c, level_emb, prefix_kv, cross_kv, mask, terms, step, cross_mask)
        return y + (1 - m) * x, kv

    def _run(self, x, c, level_emb, prefix_kv, cross_kv, mask, mod, step, cross_mask):
        mod = self.modulation(c) if mod is None else mod
        if self.ada is None:  # level_cond "add" (c added before attention) or "token" (c not read here)
            h, kv = self.attn(self.norm1(x) + mod[0] if self.add_level else self.norm1(x), prefix_kv, mask)
            x = x + h
            if self.cross is not None:
                x = x + self.cross(self.norm_x(x), cross_kv, cross_mask)
            return x + self.ffn(self.norm2(x), level_emb, step), kv
        shift1, scale1, gate1, shift2, scale2, gate2 = mod
        h, kv = self.attn(torch.addcmul(shift1, self.norm1(x), scale1), prefix_kv, mask)
        x = torch.addcmul(x, gate1, h)
        if self.cross is not None:
            x = x + self.cross(self.norm_x(x), cross_kv, cross_mask)
        x = torch.addcmul(x, gate2, self.ffn(torch.addcmul(shift2, self.norm2(x), scale2), level_emb, step))
        return x, kv

    def cross_keys_values(self, cond: torch.Tensor) -> KV:
        return self.cross.keys_values(self.cond_norm(cond))


class DiT(nn.Module):
    """Tokens [B, N, D] + per-token levels [B, N] (+ condition, context) -> tokens [B, N, D]."""

    def __init__(
        self,
        dim: int = 256,
        depth: int = 8,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        norm: str = "layer",
        qk_norm: bool = False,
        cond_mode: str = "prefix",
        ffn: FFNFactory = dense_ffn,
        level_cond: str = "adaln",
        level_token: bool = False,
        switch: dict | None = None,
        span_embedding: bool = False,
    ):
        super().__init__()
        if cond_mode not in COND_MODES:
            raise ConfigError(f"cond_mode must be one of {COND_MODES}, got {cond_mode!r}.")
        if level_cond not in LEVEL_CONDS:
            raise ConfigError(f"level_cond must be one of {LEVEL_CONDS}, got {level_cond!r}.")
        if level_cond == "token" and not level_token:
            raise ConfigError("level_cond 'token' (RDT's block) reads the level only through the level token; "
                              "set level_token=true.")
        self.dim, self.depth, self.cond_mode = dim, depth, cond_mode
        self.level_cond, self.level_token = level_cond, level_token
        self.level_emb = LevelEmbedding(dim)
        # MeanFlow's second time input: the span t - r of the interval, embedded like the level and added to it
        self.span_emb = LevelEmbedding(dim) if span_embedding else None
        hidden = int(dim * mlp_ratio)
        cross = cond_mode in ("cross", "alternating")
        switch = dict(switch or {})
        self.blocks = nn.ModuleList(
            DiTBlock(dim, heads, ffn(dim, hidden, i), norm, qk_norm, cross, level_cond,
                     LevelGatedMask(dim, switch["num_experts"], switch["top_k"]) if switch else None)
            for i in range(depth)
        )
        self.switch_prior = DiffusionPrior(depth, switch["num_experts"], switch["top_k"], switch.get("levels", 1000),
                                           switch.get("alpha", 4.0)) if switch else None
        if level_cond == "adaln":
            self.final_norm = make_norm(norm, dim, affine=False)
            self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
            nn.init.zeros_(self.final_ada[1].weight)
            nn.init.zeros_(self.final_ada[1].bias)
        else:
            self.final_norm, self.final_ada = make_norm(norm, dim), None
        self._init_linears()

    def switch_loss(self, level: torch.Tensor) -> torch.Tensor:
        """Switch-DiT's diffusion prior loss after a forward pass at per-sample levels [B]."""
        table = self.level_emb(torch.linspace(0, 1, self.switch_prior.levels, device=level.device)[None])[0]
        return self.switch_prior.loss([b.switch for b in self.blocks], table, level)

    def _init_linears(self) -> None:
        zero = {id(b.ada[1]) for b in self.blocks if b.ada is not None}
        zero |= {id(self.final_ada[1])} if self.final_ada is not None else set()
        zero |= {id(b.cross.proj) for b in self.blocks if b.cross is not None}
        for m in self.modules():
            if isinstance(m, nn.Linear) and id(m) not in zero:
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for emb in (self.level_emb, self.span_emb):
            if emb is not None:
                nn.init.normal_(emb.mlp[0].weight, std=0.02)
                nn.init.normal_(emb.mlp[2].weight, std=0.02)

    # ------------------------------------------------------------------ condition
    def encode_condition(self, cond=None, context: torch.Tensor | None = None,
                         levels: torch.Tensor | None = None, prefix_step: int | None = None,
                         cond_mask=None) -> ConditionCache:
        """Run everything that does not depend on x, once per prediction.

        cond: [B, M, D] (prefix, cross) or a list of [B, M_i, D] (alternating).
        context: [B, D] global vector added to every token's level embedding.
        levels: optional [S] levels a sampler will visit (a tensor, or host floats); their level-only
        terms are computed here in one batched pass (see ``prepare_levels``), together with level 0
        for the prefix tokens.
        prefix_step: the ffn's ``step`` in the prefix pass (``PREFIX_STEP`` when the caller
        has cached routes for it).
        cond_mask: [B, M] bool per group (True = real token), or None (all real).
        """
        cache = ConditionCache(context=context)
        if levels is not None:
            values = levels.reshape(-1).tolist() if isinstance(levels, torch.Tensor) else [float(v) for v in levels]
            self.prepare_levels(cache, values + [0.0] * (cond is not None),
                                next(self.level_emb.parameters()).device)
        if cond is None:
            cache.prefix_kv = [None] * self.depth
            cache.cross_kv = [None] * self.depth
            return cache
        groups = list(cond) if isinstance(cond, (list, tuple)) else [cond]
        masks = list(cond_mask) if isinstance(cond_mask, (list, tuple)) else [cond_mask] * (cond_mask is not None)
        if masks and len(masks) != len(groups):
            raise ValueError(f"cond_mask needs one [B, M] mask per condition group ({len(groups)}), got {len(masks)}.")
        masks = masks or [None] * len(groups)
        whole = lambda: None if all(m is None for m in masks) else torch.cat(  # noqa: E731
            [g.new_ones(g.shape[:2], dtype=torch.bool) if m is None else m for g, m in zip(groups, masks)], dim=1)
        if self.cond_mode == "prefix":
            cache.prefix_mask = _key_mask(whole())
            if len(groups) != 1:
                cond = torch.cat(groups, dim=1)
            else:
                cond = groups[0]
            terms = cache.level_terms.get(0.0)  # prefix tokens sit at level 0
            if terms is None:
                level0, c = self._level_embedding(torch.zeros(cond.shape[:2], device=cond.device), context)
                mods = [None] * self.depth
            else:
                (level0, mods, _), c = terms, None
            h = cond
            for block, mod in zip(self.blocks, mods):
                h, kv = block(h, c, level0, mask=cache.prefix_mask, terms=mod, step=prefix_step)
                cache.prefix_kv.append(kv)
            cache.cross_kv = [None] * self.depth
        else:
            if self.cond_mode == "cross" and len(groups) != 1:
                groups, masks = [torch.cat(groups, dim=1)], [whole()]
            if self.cond_mode == "alternating" and len(groups) < 2:
                raise ConfigError("cond_mode 'alternating' needs a list of >= 2 condition groups (e.g. [language, images]).")
            cache.cross_kv = [blk.cross_keys_values(groups[i % len(groups)]) for i, blk in enumerate(self.blocks)]
            cache.cross_masks = [_key_mask(masks[i % len(masks)]) for i in range(self.depth)]
            cache.prefix_kv = [None] * self.depth
        return cache

    # ------------------------------------------------------------------ denoise
    def forward(self, x: torch.Tensor, level: torch.Tensor, cond=None, context=None,
                cache: ConditionCache | None = None, causal: bool = False,
                token_mask: torch.Tensor | None = None, span: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, N, D], level [B, N] in [0, 1] -> [B, N, D]. Pass ``cache`` or ``cond``/``context``.
        ``causal``: token i of x attends to the condition and to tokens 0..i only (autoregressive
        training; ``extend`` decodes such a model token by token).
        ``token_mask``: [N, N] bool, True where token i of x may attend to token j of x (PAD: image
        tokens never attend to action tokens); condition tokens stay visible to all.
        ``span``: [B, N], MeanFlow's t - r per token (needs ``span_embedding=True``)."""
        if level.shape != x.shape[:2]:
            raise ValueError(f"level must be [B, N] = {tuple(x.shape[:2])}, got {tuple(level.shape)}.")
        if cache is None:
            cache = self.encode_condition(cond, context)
        if self.cond_mode != "prefix" and cache.cross_kv and cache.cross_kv[0] is None:
            raise ValueError(f"cond_mode {self.cond_mode!r} needs condition tokens; got none.")
        if (span is None) != (self.span_emb is None):
            raise ValueError("a DiT with span_embedding takes span=[B, N] (MeanFlow's t - r), and only such a DiT does.")
        terms = cache.level_terms_for(level) if span is None else None
        if terms is None:
            if level.shape[1] > 1 and (cache.uniform_levels or bool((level == level[:, :1]).all()) and (
                    span is None or bool((span == span[:, :1]).all()))):
                level = level[:, :1]  # one level per sample: embed and modulate once, broadcast over tokens
                span = None if span is None else span[:, :1]
            level_emb, c = self._level_embedding(level, cache.context, span)
            mods = [None] * self.depth
            final_out = self.final_ada(c) if self.final_ada is not None else None
            if self.level_token and c.shape[1] > 1:  # per-token levels: the level token takes the first token's
                c, level_emb = torch.cat([c[:, :1], c], 1), torch.cat([level_emb[:, :1], level_emb], 1)
                final_out = None if final_out is None else torch.cat([final_out[:, :1], final_out], 1)
        else:
            level_emb, mods, final_out = terms
            c = level_emb if self.level_token else None  # the level token is the context-free embedding
            if self.level_token and cache.context is not None:
                c = level_emb + cache.context[:, None]
        if self.level_token:
            x = torch.cat([c[:, :1].expand(x.shape[0], 1, -1).to(x.dtype), x], dim=1)
        self_mask = cache.self_mask(x.shape[1])
        if token_mask is not None:
            self_mask = self._own_mask(token_mask, x.shape[1], cache, self_mask)
        if causal:
            if self.level_token:
                raise ConfigError("causal decoding does not take a level token (level_token=false).")
            self_mask = self._causal_mask(x.shape[1], x.shape[1], cache, x.device, self_mask)
        masks = (self_mask, cache.cross_masks or [None] * self.depth)
        out = self.run_blocks(x, c, level_emb, mods, final_out, cache.prefix_kv, cache.cross_kv, cache.step, masks)
        return out[:, 1:] if self.level_token else out

    def _own_mask(self, token_mask: torch.Tensor, n: int, cache: ConditionCache, pad_mask=None) -> torch.Tensor:
        """[B or 1, 1, n, M + n]: every prefix key, and among the n denoised tokens ``token_mask``
        (the level token, when there is one, sees and is seen by all)."""
        own = token_mask.to(torch.bool)
        if self.level_token:
            own = torch.nn.functional.pad(own, (1, 0, 1, 0), value=True)
        if own.shape != (n, n):
            raise ValueError(f"token_mask must be [N, N] over the denoised tokens ({n - self.level_token}), "
                             f"got {tuple(token_mask.shape)}.")
        m = cache.prefix_kv[0][0].shape[2] if cache.prefix_kv and cache.prefix_kv[0] is not None else 0
        mask = torch.cat([own.new_ones(n, m), own], dim=1)[None, None]
        return mask if pad_mask is None else mask & pad_mask

    def set_attention(self, kernels) -> None:
        """Per-layer self-attention kernels (dp/core/attention.py), or None for dense attention."""
        kernels = [None] * self.depth if kernels is None else list(kernels)
        if len(kernels) != self.depth:
            raise ConfigError(f"set_attention needs one kernel per layer ({self.depth}), got {len(kernels)}.")
        for block, kernel in zip(self.blocks, kernels):
            block.attn.kernel = kernel

    @staticmethod
    def _causal_mask(n_new: int, n_seen: int, cache: ConditionCache, device, pad_mask=None) -> torch.Tensor:
        """[B or 1, 1, n_new, M + n_seen]: every prefix key, and of the n_seen denoised tokens (the
        last n_new of which are the queries) only those at or before the query."""
        m = cache.prefix_kv[0][0].shape[2] if cache.prefix_kv and cache.prefix_kv[0] is not None else 0
        q = torch.arange(n_seen - n_new, n_seen, device=device)[:, None]
        own = torch.arange(n_seen, device=device)[None, :] <= q  # [n_new, n_seen]
        mask = torch.cat([own.new_ones(n_new, m), own], dim=1)[None, None]
        return mask if pad_mask is None else mask & pad_mask

    def extend(self, x: torch.Tensor, level: torch.Tensor, cache: ConditionCache,
               past: list[KV] | None = None) -> tuple[torch.Tensor, list[KV]]:
        """Causal decoding with a K/V cache: new tokens x [B, n, D] at levels [B, n] attend to the
        condition, to every earlier token (``past``: per-layer K/V of them, None at the start) and
        causally among themselves -> (out [B, n, D], the per-layer K/V of all tokens so far)."""
        if self.level_token:
            raise ConfigError("causal decoding does not take a level token (level_token=false).")
        level_emb, c = self._level_embedding(level, cache.context)
        n_seen = x.shape[1] + (past[0][0].shape[2] if past else 0)
        mask = self._causal_mask(x.shape[1], n_seen, cache, x.device, cache.self_mask(n_seen))
        kvs = []
        for i, block in enumerate(self.blocks):
            earlier = _cat_kv(cache.prefix_kv[i], past[i] if past else None)
            x, own = block(x, c, level_emb, earlier, cache.cross_kv[i], mask=mask,
                           cross_mask=cache.cross_masks[i] if cache.cross_masks else None)
            kvs.append(_cat_kv(past[i] if past else None, own))
        return self._finish(x, self.final_ada(c) if self.final_ada is not None else None), kvs

    def run_blocks(self, x, c, level_emb, mods, final_out, prefix_kv, cross_kv, step=None,
                   masks=(None, None)) -> torch.Tensor:
        """The blocks and the final modulation, on tensors only (no lookups, no host syncs), so
        that ``compile_blocks`` can hand it to torch.compile. ``mods``: per block, its
        precomputed ``modulation`` or None (then computed from ``c``). ``masks``: (self-attention
        mask or None, per-layer cross-attention masks or None)."""
        self_mask, cross_masks = masks
        for block, pkv, ckv, mod, cmask in zip(self.blocks, prefix_kv, cross_kv, mods, cross_masks or [None] * self.depth):
            x, _ = block(x, c, level_emb, pkv, ckv, mask=self_mask, terms=mod, step=step, cross_mask=cmask)
        return self._finish(x, final_out)

    def _finish(self, x: torch.Tensor, final_out: torch.Tensor | None) -> torch.Tensor:
        """The final norm, modulated by ``final_out`` (adaLN's shift and scale) when there is one."""
        if final_out is None:
            return self.final_norm(x)
        shift, scale = final_out.chunk(2, dim=-1)
        return modulate(self.final_norm(x), shift, scale)

    def compile_blocks(self, **compile_kwargs) -> None:
        """torch.compile the per-step path (``run_blocks``); level lookups stay eager."""
        self.run_blocks = torch.compile(self.run_blocks, **compile_kwargs)

    def _level_embedding(self, level: torch.Tensor, context: torch.Tensor | None, span: torch.Tensor | None = None):
        level_emb = self.level_emb(level) if span is None else self.level_emb(level) + self.span_emb(span)
        return level_emb, (level_emb if context is None else level_emb + context[:, None])

    def prepare_levels(self, cache: ConditionCache, levels, device=None) -> None:
        """Compute every level-only term (level embedding, adaLN projections) for the levels a
        sampler will visit, in one batched pass per layer, and store them in ``cache``.

        Weights are read once per prediction instead of once per denoising step, which is
        what bounds batch-1 latency on a CPU. levels: [S] values in [0, 1], a tensor or host floats
        (then on ``device``)."""
        if isinstance(levels, torch.Tensor):
            levels, device = levels.reshape(-1).tolist(), levels.device
        values = sorted({float(v) for v in levels})
        lv = torch.tensor(values, device=device)[None, :]  # [1, S]
        context = cache.context
        level_emb, c = self._level_embedding(lv, context)  # [1 or B, S, D]
        mods = [blk.modulation(c) for blk in self.blocks]
        final = self.final_ada(c) if self.final_ada is not None else None
        for i, v in enumerate(values):
            pick = slice(i, i + 1)
            cache.level_terms[v] = (level_emb[:, pick], [tuple(t[:, pick] for t in m) for m in mods],
                                    None if final is None else final[:, pick])

    def plan_calls(self, cache: ConditionCache, call_levels: list) -> None:
        """Fix the level of every network call of a prediction, so that its terms are looked up by
        ``cache.call`` with no check that reads a level on the host. Each entry is a float (every
        token at that level) or a list of per-token levels [N] (streaming's staggered chunks); every
        value must have been prepared (``prepare_levels``)."""
        cache.call_terms = [self._call_terms(cache, v) for v in call_levels]

    def _call_terms(self, cache: ConditionCache, levels) -> tuple:
        if isinstance(levels, (int, float)):
            return cache.level_terms[float(levels)]
        values = [float(v) for v in levels]
        if self.level_token:  # the level token takes the first token's terms, as in ``forward``
            values = values[:1] + values
        parts = [cache.level_terms[v] for v in values]
        cat = lambda ts: torch.cat(ts, dim=1)  # noqa: E731
        mods = [tuple(cat([p[1][i][k] for p in parts]) for k in range(len(parts[0][1][i]))) for i in range(self.depth)]
        return cat([p[0] for p in parts]), mods, None if parts[0][2] is None else cat([p[2] for p in parts])
