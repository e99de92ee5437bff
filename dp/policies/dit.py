"""`policy=dit`: the baseline diffusion-transformer policy.

Observation tokens (state MLP / image CNN per step) are the DiT's condition; the action
chunk [B, H, A] is tokenized ``action_patch`` actions per token, all at one noise level, and
denoised by the shared core. Defaults follow diffusion_policy: H=16, To=2, Ta=8, DDPM
vp_cosine with 100 training steps and epsilon prediction, DDIM 10 steps at inference.

This file only reads the config and picks the parts; ``DenoisingPolicy``
(dp/policies/denoising.py) composes them.
"""
from __future__ import annotations

from torch import nn

from dp.core import DiT
from dp.core.codecs import ContinuousActionCodec
from dp.core.dit import dense_ffn, swiglu_ffn
from dp.core.moe import active_parameters, moe_ffn
from dp.diffusion import make_process
from dp.encoders.language import make_language_encoder
from dp.encoders.obs import ObsEncoder
from dp.encoders.tokens import ObservationTokens
from dp.errors import ConfigError
from dp.policies.anchors import AnchorPlugin, anchor_options
from dp.policies.denoising import DenoisingPolicy

DEFAULT_PROCESS = {"schedule": "vp_cosine", "prediction": "eps", "train_steps": 100, "clip_x0": 1.0}
DEFAULT_SAMPLER = {"name": "ddim", "steps": 10}
FFNS = ("dense", "swiglu", "moe")  # GELU MLP | SwiGLU of equal parameters | noise-routed SwiGLU experts
# per_key: a token per (step, low-dim key or camera view) + one pooled language token (ObsEncoder);
# sequence: token sequences with pad masks: a token per word, per (step, key), per image patch (ObservationTokens)
OBS_TOKENS = ("per_key", "sequence")
# ffn "moe": MoDE's defaults (4 SwiGLU experts, top-2, balance loss weight 0.01)
DEFAULT_MOE = {"num_experts": 4, "top_k": 2, "shared_expert": False, "balance_weight": 0.01}
# streaming.train_fraction: share of training samples whose levels are staggered by chunk (SDP: 0.8);
# 0 trains the usual one level per sample
DEFAULT_STREAMING = {"train_fraction": 0.0}
# Switch-DiT's level-gated masks: num_experts 0 = off; the official DMoE config: 3 experts, top-2, w_JSD 1
DEFAULT_SWITCH = {"num_experts": 0, "top_k": 2, "prior_weight": 1.0, "alpha": 4.0, "levels": 1000}


def _options(name: str, given: dict | None, defaults: dict) -> dict:
    options = {**defaults, **(given or {})}
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown {name} option(s) {unknown}; allowed: {sorted(defaults)}.")
    return options


def obs_encoder_for(obs_tokens: str, shape_meta: dict, dim: int, n_obs_steps: int, image_encoder: dict | None,
                    language: dict | None):
    """The observation encoder ``obs_tokens`` names (per_key: ObsEncoder; sequence: ObservationTokens,
    which then also encodes the instruction)."""
    if obs_tokens not in OBS_TOKENS:
        raise ConfigError(f"obs_tokens must be one of {OBS_TOKENS}, got {obs_tokens!r}.")
    if obs_tokens == "sequence":
        instructions = list(shape_meta.get("instructions") or [])
        return ObservationTokens(shape_meta, dim, n_obs_steps, image_encoder, language, instructions)
    return ObsEncoder(shape_meta, dim, n_obs_steps, image_encoder)


def pooled_language_for(obs_tokens: str, language: dict | None, shape_meta: dict, dim: int):
    """The one-token instruction encoder of ``obs_tokens=per_key`` (None otherwise or without language)."""
    if not language or obs_tokens != "per_key":
        return None
    return make_language_encoder(language, list(shape_meta.get("instructions") or []), dim)


def ffn_factory(ffn: str, moe: dict):
    """The DiT block's feed-forward factory for ``ffn`` (dense | swiglu | moe)."""
    if ffn not in FFNS:
        raise ConfigError(f"ffn must be one of {FFNS}, got {ffn!r}.")
    if ffn == "moe":
        return moe_ffn(int(moe["num_experts"]), int(moe["top_k"]), bool(moe["shared_expert"]))
    return {"dense": dense_ffn, "swiglu": swiglu_ffn}[ffn]


class DiTPolicy(DenoisingPolicy):
    def __init__(
        self,
        shape_meta: dict,
        horizon: int = 16,
        n_obs_steps: int = 2,
        n_action_steps: int = 8,
        dim: int = 192,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        norm: str = "layer",
        qk_norm: bool = False,
        cond_mode: str = "prefix",
        process: dict | None = None,
        sampler: dict | None = None,
        image_encoder: dict | None = None,
        action_patch: int = 1,
        initial_noise: str = "call",
        level_cond: str = "adaln",
        level_token: bool = False,
        language: dict | None = None,
        ffn: str = "dense",
        moe: dict | None = None,
        streaming: dict | None = None,
        anchors: dict | None = None,
        obs_tokens: str = "per_key",
        switch: dict | None = None,
    ):
        config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        config["_target_"] = f"{type(self).__module__}.{type(self).__qualname__}"
        moe = _options("moe", moe, DEFAULT_MOE)
        if moe["balance_weight"] < 0:
            raise ConfigError(f"moe.balance_weight must be >= 0, got {moe['balance_weight']}.")
        streaming = _options("streaming", streaming, DEFAULT_STREAMING)
        if not 0 <= streaming["train_fraction"] <= 1:
            raise ConfigError(f"streaming.train_fraction must be in [0, 1], got {streaming['train_fraction']}.")
        anchors = anchor_options(anchors)
        switch = _options("switch", switch, DEFAULT_SWITCH)
        if switch["num_experts"] and (switch["prior_weight"] < 0 or not 1 <= switch["top_k"] <= switch["num_experts"]):
            raise ConfigError(f"switch needs 1 <= top_k <= num_experts and prior_weight >= 0; got {switch}.")
        action_dim = int(shape_meta["action"][0])
        process = make_process(process, DEFAULT_PROCESS)  # {name: meanflow, ...} is MeanFlow
        # built in this order so that a seed gives the weights it gave before the composition
        obs_encoder = obs_encoder_for(obs_tokens, shape_meta, dim, n_obs_steps, image_encoder, language)
        dit = DiT(dim, depth, heads, mlp_ratio, norm, qk_norm, cond_mode, ffn=ffn_factory(ffn, moe),
                  level_cond=level_cond, level_token=level_token, span_embedding=getattr(process, "interval_network", False),
                  switch={k: switch[k] for k in ("num_experts", "top_k", "alpha", "levels")} if switch["num_experts"] else None)
        language = pooled_language_for(obs_tokens, language, shape_meta, dim)
        codec = ContinuousActionCodec(action_dim, dim, horizon, action_patch)
        plugins = {}
        if anchors["count"] > 0:
            plugins["anchors"] = AnchorPlugin(anchors, dim, horizon, action_dim, process.prediction)
        super().__init__(
            config, shape_meta=shape_meta, horizon=horizon, n_obs_steps=n_obs_steps, n_action_steps=n_action_steps,
            obs_encoder=obs_encoder, language=language, codec=codec, process=process, dit=dit,
            sampler={**DEFAULT_SAMPLER, **(sampler or {})}, initial_noise=initial_noise,
            stream_fraction=float(streaming["train_fraction"]), balance_weight=float(moe["balance_weight"]),
            plugins=plugins, switch_weight=float(switch["prior_weight"]) if switch["num_experts"] else 0.0,
        )

    def active_parameters(self, module: nn.Module | None = None) -> int:
        """Parameters of ``module`` (default: the whole policy; ``self.dit`` for the denoiser)
        that one token passes through at inference (MoE: top_k of num_experts). Dense: all."""
        return active_parameters(self if module is None else module)
