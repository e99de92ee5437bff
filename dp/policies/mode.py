"""`policy=mode`: MoDE (Reuss et al.), a DiT policy whose feed-forward layers are experts
routed by the noise level alone, trained multi-task with language.

What it adds to ``policy=dit`` (everything else is the shared core and DiTPolicy):

- every block's ffn is a ``NoiseRoutedMoE`` (``num_experts`` SwiGLU experts, ``top_k``
  per token, optional shared expert); the router reads the level embedding only;
- MoDE's block (``level_cond: add``): the level embedding is added to every token
  before self-attention, with RMSNorm and QK-RMSNorm, and prepended as a noise token
  (``level_token: true``);
- the Switch-style balance loss, weighted by ``balance_weight``, added to the loss;
  router entropy and per-expert usage per noise-level bucket reported beside it;
- expert caching at inference (``DiTPolicy.prepare_inference``): the routes of every
  sampler call are computed once and each call runs one fused MLP per layer.

Observation and instruction tokens form the prefix, whose keys/values are computed once
per prediction at level 0. The official code instead adds the noise embedding to the
observation and goal tokens too, which makes them depend on the level and rules out
that cache; dp keeps the cache (README, "MoDE").

``configs/policy/mode.yaml`` runs MoDE's recipe: EDM preconditioning (sigma_data 0.5,
log-logistic sigma with loc ln 0.5, scale 0.5) and 10 DDIM steps in sigma space on an
exponential schedule. ``policy.process`` set to dp's defaults (vp_cosine, eps) runs the
same network on the baseline's recipe.
"""
from __future__ import annotations

import torch

from dp.core.moe import moe_ffn
from dp.policies.dit import DiTPolicy

LEVEL_BUCKETS = 4  # router statistics are reported for levels in [0, .25), [.25, .5), ...


class MoDEPolicy(DiTPolicy):
    def __init__(self, shape_meta: dict, num_experts: int = 4, top_k: int = 2, shared_expert: bool = False,
                 balance_weight: float = 0.01, **kwargs):
        if balance_weight < 0:
            raise ValueError(f"balance_weight must be >= 0, got {balance_weight}.")
        # read by _dit_extra() during DiTPolicy.__init__, before nn.Module is set up
        object.__setattr__(self, "_moe_args", (num_experts, top_k, shared_expert))
        kwargs.setdefault("norm", "rms")
        kwargs.setdefault("qk_norm", True)
        kwargs.setdefault("level_cond", "add")
        kwargs.setdefault("level_token", True)
        super().__init__(shape_meta, **kwargs)
        self.config.update(num_experts=num_experts, top_k=top_k, shared_expert=shared_expert,
                           balance_weight=balance_weight)
        self.balance_weight = balance_weight

    def _dit_extra(self) -> dict:
        num_experts, top_k, shared = self._moe_args
        return {"ffn": moe_ffn(num_experts, top_k, shared)}

    def compute_loss(self, batch: dict) -> dict[str, torch.Tensor]:
        out = super().compute_loss(batch)
        ffns = self._routed_ffns()
        balance = torch.stack([f.aux_loss for f in ffns]).mean()
        out["mse"] = out["loss"]
        out["balance_loss"] = balance
        out["loss"] = out["loss"] + self.balance_weight * balance
        out.update(self.router_stats(self.last_levels))
        return out

    @torch.no_grad()
    def router_stats(self, levels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Router entropy and expert usage per level bucket, averaged over layers, from the last
        forward pass. levels: [B], one level per sample. Keys ``router/entropy_b{j}`` and
        ``router/usage_b{j}_e{e}`` (share of the k assignments that went to expert e)."""
        ffns = self._routed_ffns()
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
