"""`policy=mode`: MoDE (Reuss et al.), a DiT policy whose feed-forward layers are experts
routed by the noise level alone, trained multi-task with language.

MoDE is a configuration of the shared core and DiTPolicy, not a fork; this class only
sets MoDE's defaults:

- ``ffn="moe"``: every block's ffn is a ``NoiseRoutedMoE`` (``moe.num_experts`` SwiGLU
  experts, ``moe.top_k`` per token, optional shared expert); the router reads the level
  embedding only. The balance loss (weight ``moe.balance_weight``) is added to the loss,
  with router entropy and per-expert usage per noise-level bucket beside it
  (``DenoisingPolicy.compute_loss``);
- MoDE's block (``level_cond="add"``): the level embedding is added to every token
  before self-attention, with RMSNorm and QK-RMSNorm, and prepended as a noise token
  (``level_token=True``);
- expert caching at inference (``RouteCache`` in dp/core/moe.py): the routes of every
  sampler call are computed once and each call runs one fused MLP per layer.

Observation and instruction tokens form the prefix, whose keys/values are computed once
per prediction at level 0. The official code instead adds the noise embedding to the
observation and goal tokens too, which makes them depend on the level and rules out
that cache; dp keeps the cache (README, "MoDE").

``dp/configs/policy/mode.yaml`` runs MoDE's recipe: EDM preconditioning (sigma_data 0.5,
log-logistic sigma with loc ln 0.5, scale 0.5) and 10 DDIM steps in sigma space on an
exponential schedule. ``policy.process`` set to dp's defaults (vp_cosine, eps) runs the
same network on the baseline's recipe.
"""
from __future__ import annotations

from dp.policies.dit import DiTPolicy

MODE_DEFAULTS = {"ffn": "moe", "norm": "rms", "qk_norm": True, "level_cond": "add", "level_token": True}


class MoDEPolicy(DiTPolicy):
    def __init__(self, shape_meta: dict, **kwargs):
        super().__init__(shape_meta, **{**MODE_DEFAULTS, **kwargs})
