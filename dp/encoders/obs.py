"""Observation tokens for a policy: state and camera images over To steps.

shape_meta (from the dataset; stored in the policy config)::

    {"action": [A], "obs": {"state": [S], "image": [3, H, W], ...},
     "angles": {"state": [4]}}   # optional: low-dim dims that are angles in radians (StateEncoder)

Obs keys with a 3-D shape are cameras (each gets its own CNN); 1-D keys are low-dim
vectors (each gets its own MLP). Output: [B, To * n_keys, D] with a learned embedding
per (step, key), ordered step-major.
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from dp.encoders.image import ImageEncoder
from dp.encoders.state import StateEncoder
from dp.errors import ConfigError


def camera_keys(shape_meta: dict) -> list[str]:
    """Image obs: [3, H, W] (one camera) or [V, 3, H, W] (V cameras stacked by the dataset)."""
    return sorted(k for k, s in shape_meta["obs"].items() if len(s) in (3, 4))


def lowdim_keys(shape_meta: dict) -> list[str]:
    return sorted(k for k, s in shape_meta["obs"].items() if len(s) == 1)


def angle_dims(shape_meta: dict) -> dict[str, list[int]]:
    """``shape_meta["angles"]`` (obs name -> dims in radians), checked against the low-dim obs."""
    angles = {k: [int(d) for d in v] for k, v in (shape_meta.get("angles") or {}).items()}
    for k, dims in angles.items():
        shape = shape_meta["obs"].get(k)
        if shape is None or len(shape) != 1:
            raise ConfigError(f"task.obs_angles names '{k}', which is not a low-dim observation; the low-dim "
                              f"observations are {lowdim_keys(shape_meta)}.")
        bad = [d for d in dims if not 0 <= d < shape[0]]
        if bad or len(set(dims)) != len(dims):
            raise ConfigError(f"task.obs_angles['{k}'] must list distinct dims in [0, {shape[0]}); got {dims}.")
    return angles


class ObsEncoder(nn.Module):
    def __init__(self, shape_meta: dict, dim: int, n_obs_steps: int, image: dict | None = None):
        super().__init__()
        self.lowdim = lowdim_keys(shape_meta)
        self.cameras = camera_keys(shape_meta)
        self.keys = self.lowdim + self.cameras
        odd = {k: s for k, s in shape_meta["obs"].items() if len(s) not in (1, 3, 4)}
        if not self.keys or odd:
            raise ConfigError(f"shape_meta['obs'] must hold low-dim [S] and image [3, H, W] / [V, 3, H, W] "
                              f"observations; got {shape_meta['obs']}.")
        self.n_obs_steps = n_obs_steps
        self.views = {k: shape_meta["obs"][k][0] if len(shape_meta["obs"][k]) == 4 else 1 for k in self.cameras}
        self.encoders = nn.ModuleDict()
        angles = angle_dims(shape_meta)
        for k in self.lowdim:
            self.encoders[k] = StateEncoder(shape_meta["obs"][k][0], dim, angles=angles.get(k))
        for k in self.cameras:
            c, h, w = shape_meta["obs"][k][-3:]
            if c != 3 or h != w:
                raise ConfigError(f"camera '{k}' must be [3, H, H] per view; got {shape_meta['obs'][k]}.")
            for name in self._view_names(k):  # one encoder per camera view, as diffusion_policy
                self.encoders[name] = ImageEncoder(image_size=h, dim=dim, **(image or {}))
        self.pos = nn.Parameter(torch.zeros(1, self.n_tokens, dim))
        nn.init.normal_(self.pos, std=0.02)

    def _view_names(self, key: str) -> list[str]:
        """Encoder names of a camera key: the key itself for one view, ``key_v{i}`` for several."""
        return [key] if self.views[key] == 1 else [f"{key}_v{i}" for i in range(self.views[key])]

    @property
    def tokens_per_step(self) -> int:
        return len(self.lowdim) + sum(self.views.values())

    @property
    def n_tokens(self) -> int:
        return self.n_obs_steps * self.tokens_per_step

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """obs: normalized low-dim [B, To, S]; images [B, To, 3, H, W] or [B, To, V, 3, H, W] (uint8
        range) -> [B, To*K, D], K tokens per step: one per low-dim key and one per camera view."""
        tokens = []
        for k in self.keys:
            x = obs[k]
            if x.shape[1] != self.n_obs_steps:
                raise ConfigError(f"obs '{k}' has {x.shape[1]} steps; the policy expects n_obs_steps={self.n_obs_steps}.")
            if k in self.cameras:
                views = x.unbind(2) if x.dim() == 6 else [x]
                for name, view in zip(self._view_names(k), views, strict=True):
                    feat = self.encoders[name](rearrange(view, "b t c h w -> (b t) c h w"))
                    tokens.append(rearrange(feat, "(b t) d -> b t d", b=x.shape[0]))
            else:
                tokens.append(self.encoders[k](x))
        return rearrange(torch.stack(tokens, dim=2), "b t k d -> b (t k) d") + self.pos
