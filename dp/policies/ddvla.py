"""`policy=ddvla`: Discrete Diffusion VLA (Liang et al.). The action chunk is H*A discrete tokens,
one per (step, action dimension), decoded by masked (absorbing-state) diffusion in the shared
bidirectional DiT: easy tokens first, unsure ones remasked and revisited.

A composition like every method: the same observation encoders (state, cameras, language),
``DiscreteActionCodec`` (1st/99th-percentile bins, 256 by default, fitted before training),
``MaskedProcess`` (cross-entropy on masked tokens) and ``MaskedSampler`` (MaskGIT rounds with
remasking; dp/diffusion/masked.py). The core's per-token level is the token's mask state (1
masked, 0 decoded): it tells every token which of its neighbours are known, which a single
round-level ratio would not.
"""
from __future__ import annotations

from dp.core import DiT
from dp.core.codecs import DiscreteActionCodec
from dp.diffusion.autoregressive import AutoregressiveProcess
from dp.diffusion.masked import MaskedProcess
from dp.errors import ConfigError
from dp.policies.denoising import DenoisingPolicy
from dp.policies.dit import ffn_factory, obs_encoder_for, pooled_language_for

DEFAULT_PROCESS = {"schedule": "cosine", "label_smoothing": 0.0}
DEFAULT_SAMPLER = {"name": "masked", "steps": 12}
AR_DEFAULT_SAMPLER = {"name": "autoregressive", "steps": 1}


class DDVLAPolicy(DenoisingPolicy):
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
        bins: int = 256,
        process: dict | None = None,
        sampler: dict | None = None,
        image_encoder: dict | None = None,
        language: dict | None = None,
        obs_tokens: str = "per_key",
    ):
        config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        config["_target_"] = f"{type(self).__module__}.{type(self).__qualname__}"
        codec = DiscreteActionCodec(int(shape_meta["action"][0]), dim, horizon, bins)
        super().__init__(
            config, shape_meta=shape_meta, horizon=horizon, n_obs_steps=n_obs_steps, n_action_steps=n_action_steps,
            obs_encoder=obs_encoder_for(obs_tokens, shape_meta, dim, n_obs_steps, image_encoder, language),
            language=pooled_language_for(obs_tokens, language, shape_meta, dim), codec=codec,
            process=self.make_process(codec, process or {}),
            dit=DiT(dim, depth, heads, mlp_ratio, norm, qk_norm, cond_mode, ffn=ffn_factory("dense", {})),
            sampler={**self.default_sampler, **(sampler or {})}, causal=self.causal_attention,
        )

    default_sampler = DEFAULT_SAMPLER
    causal_attention = False

    @staticmethod
    def make_process(codec: DiscreteActionCodec, options: dict):
        unknown = sorted(set(options) - set(DEFAULT_PROCESS))
        if unknown:
            raise ConfigError(f"unknown ddvla process option(s) {unknown}; allowed: {sorted(DEFAULT_PROCESS)}.")
        return MaskedProcess(codec.mask_id, **{**DEFAULT_PROCESS, **options})


class ARTokensPolicy(DDVLAPolicy):
    """`policy=ar_tokens`, the control: the same codec, encoders and backbone with causal attention,
    decoded left to right with a K/V cache (dp/diffusion/autoregressive.py). Against ddvla only the
    decoding differs. ``process`` takes ``label_smoothing`` only."""

    default_sampler = AR_DEFAULT_SAMPLER
    causal_attention = True

    @staticmethod
    def make_process(codec: DiscreteActionCodec, options: dict):
        unknown = sorted(set(options) - {"label_smoothing"})
        if unknown:
            raise ConfigError(f"unknown ar_tokens process option(s) {unknown}; allowed: ['label_smoothing'].")
        return AutoregressiveProcess(codec.mask_id, float(options.get("label_smoothing", 0.0)))
