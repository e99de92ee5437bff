"""Observation encoders that return token sequences with a pad mask, for prefix conditioning
or cross-attention (RDT: language tokens on even layers, image tokens on odd ones).

    enc = ObservationTokens(shape_meta, dim=256, n_obs_steps=2, image_encoder={"tokens_per_image": 4},
                            language={"encoder": "builtin"})
    groups = enc(obs)                       # {"state": Tokens, "image": Tokens, "language": Tokens}
    prefix = Tokens.cat(*groups.values())   # one [B, M, D] sequence + mask
    cond = [groups["language"].x, groups["image"].x]   # DiT(cond_mode="alternating")

Token order inside a group is step-major: state (t, key), image (t, camera, patch).
Images are uint8 or float in [0, 255]; low-dim observations are already normalized.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from dp.encoders.image import ImageEncoder
from dp.encoders.language import BuiltinTextEncoder, make_language_encoder
from dp.encoders.state import StateEncoder
from dp.errors import ConfigError


@dataclass
class Tokens:
    """x [B, M, D] with mask [B, M] bool (True = a real token, False = padding)."""

    x: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def dense(cls, x: torch.Tensor) -> "Tokens":
        """Tokens without padding: mask all True."""
        return cls(x, torch.ones(x.shape[:2], dtype=torch.bool, device=x.device))

    @staticmethod
    def cat(*tokens: "Tokens") -> "Tokens":
        """Concatenate along M: [B, M_i, D] -> [B, sum M_i, D]."""
        return Tokens(torch.cat([t.x for t in tokens], dim=1), torch.cat([t.mask for t in tokens], dim=1))

    def pooled(self) -> torch.Tensor:
        """Masked mean over the real tokens: [B, D] (zeros for a row with none)."""
        w = self.mask[..., None].to(self.x.dtype)
        return (self.x * w).sum(1) / w.sum(1).clamp_min(1)

    def attn_mask(self) -> torch.Tensor:
        """[B, 1, 1, M] bool for ``F.scaled_dot_product_attention`` (True = may attend)."""
        return self.mask[:, None, None, :]


def _embedding(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape) * 0.02)


def is_image_shape(shape) -> bool:
    """[3, H, W] (one camera) or [V, 3, H, W] (V cameras)."""
    return len(shape) in (3, 4) and shape[-3] == 3


class StateTokens(nn.Module):
    """One token per (step, low-dim key): {key: [B, To, S_key]} -> Tokens [B, To*K, D].

    Each key has its own MLP; learned step and key embeddings are added. Keys are sorted."""

    def __init__(self, shape_meta_lowdim: dict, dim: int, n_obs_steps: int):
        super().__init__()
        if not shape_meta_lowdim:
            raise ConfigError("StateTokens needs at least one low-dim key ({name: [S]}); got none.")
        self.keys = sorted(shape_meta_lowdim)
        self.n_obs_steps = n_obs_steps
        self.encoders = nn.ModuleDict({k: StateEncoder(int(shape_meta_lowdim[k][0]), dim) for k in self.keys})
        self.step_emb = _embedding(n_obs_steps, dim)
        self.key_emb = _embedding(len(self.keys), dim)

    @property
    def n_tokens(self) -> int:
        return self.n_obs_steps * len(self.keys)

    def forward(self, obs: dict[str, torch.Tensor]) -> Tokens:
        for k in self.keys:
            if obs[k].shape[1] != self.n_obs_steps:
                raise ConfigError(f"obs '{k}' has {obs[k].shape[1]} steps; expected n_obs_steps={self.n_obs_steps}.")
        x = torch.stack([self.encoders[k](obs[k]) for k in self.keys], dim=2)  # [B, To, K, D]
        x = x + self.step_emb[:, None] + self.key_emb[None]
        return Tokens.dense(rearrange(x, "b t k d -> b (t k) d"))


class ImageTokens(nn.Module):
    """P patch tokens per camera image: image [B, To, V, 3, H, W] (or [B, To, 3, H, W] when V = 1)
    -> Tokens [B, To*V*P, D].

    One CNN trunk shared by all cameras (``ImageEncoder``'s ResNet-style trunk: random crop in
    training, centre crop at evaluation), its feature map average-pooled to a sqrt(P) x sqrt(P)
    grid, each cell projected to ``dim``; learned step, camera and patch-position embeddings
    are added. ``crop=None`` uses the whole image."""

    def __init__(self, image_shape, dim: int, n_obs_steps: int, tokens_per_image: int = 4,
                 crop: int | None = None, width: int = 64, stages: int = 4):
        super().__init__()
        if not is_image_shape(image_shape):
            raise ConfigError(f"an image must be [3, H, W] or [V, 3, H, W]; got {list(image_shape)}.")
        *views, _, h, w = image_shape
        if h != w:
            raise ConfigError(f"images must be square (crops are); got {h}x{w}.")
        self.side = math.isqrt(tokens_per_image)
        if self.side < 1 or self.side**2 != tokens_per_image:
            raise ConfigError(f"tokens_per_image must be a square number (1, 4, 9, 16); got {tokens_per_image}.")
        self.n_views = views[0] if views else 1
        self.n_obs_steps, self.tokens_per_image, self.image_size = n_obs_steps, tokens_per_image, h
        self.cnn = ImageEncoder(image_size=h, crop=crop, dim=dim, width=width, stages=stages)
        self.cnn.pool = self.cnn.out = None  # only the trunk (``feature_map``) is used
        channels, fside = self.cnn.feature_shape()
        if fside < self.side:
            raise ConfigError(f"tokens_per_image={tokens_per_image} needs a {self.side}x{self.side} feature map; a "
                              f"{self.cnn.crop_size}px crop through {stages} stages gives {fside}x{fside}. Use fewer "
                              "tokens_per_image, fewer stages or larger images.")
        self.proj = nn.Linear(channels, dim)
        self.step_emb = _embedding(n_obs_steps, dim)
        self.camera_emb = _embedding(self.n_views, dim)
        self.patch_emb = _embedding(tokens_per_image, dim)

    @property
    def n_tokens(self) -> int:
        return self.n_obs_steps * self.n_views * self.tokens_per_image

    def forward(self, image: torch.Tensor) -> Tokens:
        if image.ndim == 5 and self.n_views == 1:
            image = image[:, :, None]
        expected = (self.n_obs_steps, self.n_views, 3, self.image_size, self.image_size)
        if image.ndim != 6 or tuple(image.shape[1:]) != expected:
            raise ConfigError(f"image must be [B, To, V, 3, H, W] with [To, V, 3, H, W] = {list(expected)}; "
                              f"got {list(image.shape)}.")
        b, t = image.shape[:2]
        feat = self.cnn.feature_map(rearrange(image, "b t v c h w -> (b t v) c h w"))
        feat = F.adaptive_avg_pool2d(feat, self.side)
        x = self.proj(rearrange(feat, "(b t v) c h w -> b t v (h w) c", b=b, t=t))
        x = x + self.step_emb[:, None, None] + self.camera_emb[None, :, None] + self.patch_emb[None, None]
        return Tokens.dense(rearrange(x, "b t v p d -> b (t v p) d"))


class WordTokens(nn.Module):
    """Instruction strings -> Tokens [B, L, D], one per word (builtin) or sub-word (pretrained);
    padding of the shorter instructions is masked.

    Wraps a language encoder of ``dp.encoders.language`` and uses its ``tokens`` method. The
    builtin encoder is trained at ``dim`` and used as is; a frozen pretrained model gets a
    trained linear projection from its hidden size to ``dim``."""

    def __init__(self, encoder: nn.Module, dim: int):
        super().__init__()
        self.encoder = encoder
        trained = isinstance(encoder, BuiltinTextEncoder) and encoder.token_dim == dim
        self.proj = nn.Identity() if trained else nn.Linear(encoder.token_dim, dim)

    def forward(self, texts: list[str]) -> Tokens:
        x, mask = self.encoder.tokens(list(texts))
        return Tokens(self.proj(x) * mask[..., None], mask)


class ObservationTokens(nn.Module):
    """Every observation as token groups: obs -> {"state": Tokens, "image": Tokens, "language": Tokens},
    only the groups this ``shape_meta`` (and ``language``) calls for.

    shape_meta["obs"]: {key: [S]} low-dim (one ``StateTokens`` over all of them), {key: [3, H, W]
    or [V, 3, H, W]} images (an ``ImageTokens`` per key, built with ``image_encoder``'s kwargs;
    several keys are concatenated in key order). ``language``: ``make_language_encoder``'s
    config; its vocabulary comes from ``instructions`` (default shape_meta["instructions"]).
    """

    def __init__(self, shape_meta: dict, dim: int, n_obs_steps: int, image_encoder: dict | None = None,
                 language: dict | None = None, instructions: list[str] | None = None):
        super().__init__()
        obs = shape_meta["obs"]
        bad = {k: s for k, s in obs.items() if len(s) != 1 and not is_image_shape(s)}
        if bad:
            raise ConfigError(f"obs keys must be low-dim [S] or images [3, H, W] / [V, 3, H, W]; got {bad}.")
        if shape_meta.get("angles"):
            raise ConfigError(f"task.obs_angles ({shape_meta['angles']}) is read by the per-key observation encoder "
                              f"only; set policy.obs_tokens=per_key, or task.obs_angles=null.")
        lowdim = {k: s for k, s in obs.items() if len(s) == 1}
        self.image_keys = sorted(k for k, s in obs.items() if is_image_shape(s))
        self.state = StateTokens(lowdim, dim, n_obs_steps) if lowdim else None
        self.images = nn.ModuleDict(
            {k: ImageTokens(obs[k], dim, n_obs_steps, **(image_encoder or {})) for k in self.image_keys})
        self.language = None
        if language:
            texts = list(instructions if instructions is not None else shape_meta.get("instructions") or [])
            self.language = WordTokens(make_language_encoder(language, texts, dim), dim)
        if self.state is None and not self.image_keys and self.language is None:
            raise ConfigError(f"nothing to encode: shape_meta['obs'] is {obs} and no language is configured.")

    @property
    def lowdim(self) -> list[str]:
        return self.state.keys if self.state else []

    @property
    def cameras(self) -> list[str]:
        return self.image_keys

    @property
    def keys(self) -> list[str]:
        """The obs keys ``forward`` reads (plus "instruction" when language is configured)."""
        return self.lowdim + self.image_keys

    def forward(self, obs: dict, instructions: list[str] | None = None) -> dict[str, Tokens]:
        """obs: low-dim [B, To, S], images [B, To, (V,) 3, H, W], "instruction" (B strings,
        or pass ``instructions``)."""
        groups = {}
        if self.state is not None:
            groups["state"] = self.state(obs)
        if self.image_keys:
            groups["image"] = Tokens.cat(*(self.images[k](obs[k]) for k in self.image_keys))
        if self.language is not None:
            texts = instructions if instructions is not None else obs.get("instruction")
            if texts is None:
                raise KeyError("these observation tokens include language: pass obs['instruction'] (B strings).")
            groups["language"] = self.language([texts] if isinstance(texts, str) else texts)
        return groups
