"""Per-key affine normalization that travels inside a policy's state dict.

Modes:
- ``limits``: min-max to [-1, 1] (diffusion_policy's default; DDPM clips samples there).
- ``gaussian``: zero mean, unit standard deviation.
Dimensions whose range (or std) is below ``eps`` are constant: they map to 0 with
scale 1 rather than dividing by ~0, and unnormalize back to their constant value.

    norm = Normalizer.fit({"action": actions, "state": states}, mode="limits")
    z = norm.normalize("action", a)           # torch or numpy, any leading shape
    a = norm.unnormalize("action", z)
    norm2 = Normalizer.from_state_dict(norm.state_dict())
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from dp.data.errors import DatasetError

MODES = ("limits", "gaussian")
STATS = ("min", "max", "mean", "std")


class _KeyNorm(nn.Module):
    """scale/offset for one key: normalized = x * scale + offset. Buffers are [D] float32."""

    def __init__(self, dim: int):
        super().__init__()
        for name in ("scale", "offset", *STATS):
            self.register_buffer(name, torch.zeros(dim))


class Normalizer(nn.Module):
    def __init__(self):
        super().__init__()
        self.params = nn.ModuleDict()

    @classmethod
    def fit(cls, arrays: Mapping[str, np.ndarray], mode: str | Mapping[str, str] = "limits", eps: float = 1e-4):
        """Fit on ``{key: [N, ..., D]}`` (statistics over every axis but the last)."""
        norm = cls()
        for key, x in arrays.items():
            key_mode = mode if isinstance(mode, str) else mode.get(key, "limits")
            if key_mode not in MODES:
                raise DatasetError(f"Normalizer mode for '{key}' must be one of {MODES}, got {key_mode!r}.")
            x = np.asarray(x, dtype=np.float64)
            x = x.reshape(-1, x.shape[-1]) if x.ndim > 1 else x.reshape(-1, 1)
            if len(x) == 0:
                raise DatasetError(f"Cannot fit normalizer for '{key}': no data.")
            if not np.isfinite(x).all():
                raise DatasetError(f"Cannot fit normalizer for '{key}': it contains NaN or inf.")
            lo, hi, mean, std = x.min(0), x.max(0), x.mean(0), x.std(0)
            if key_mode == "limits":
                rng = hi - lo
                const = rng < eps
                scale = np.where(const, 1.0, 2.0 / np.where(const, 1.0, rng))
                offset = np.where(const, -lo, -1.0 - lo * scale)
            else:
                const = std < eps
                scale = np.where(const, 1.0, 1.0 / np.where(const, 1.0, std))
                offset = np.where(const, -mean, -mean * scale)
            m = _KeyNorm(x.shape[1])
            for name, v in zip(("scale", "offset", *STATS), (scale, offset, lo, hi, mean, std)):
                getattr(m, name).copy_(torch.as_tensor(v, dtype=torch.float32))
            norm.params[key] = m
        return norm

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> "Normalizer":
        """Rebuild from ``state_dict()`` output (keys ``params.<key>.<buffer>``)."""
        norm = cls()
        head = prefix + "params."
        for k, v in state_dict.items():
            if k.startswith(head) and k.endswith(".scale"):
                key = k[len(head) : -len(".scale")]
                norm.params[key] = _KeyNorm(v.shape[0])
        norm.load_state_dict({k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(head)})
        return norm

    def pass_through(self, key: str, dims) -> None:
        """Leave dims ``dims`` of ``key`` as they are (scale 1, offset 0): angles in radians, which the
        observation encoder turns into sin and cos itself (an affine map keeps their wrap-around jump)."""
        p = self._get(key)
        for d in dims:
            if not 0 <= int(d) < p.scale.shape[0]:
                raise ValueError(f"Normalizer '{key}' has {p.scale.shape[0]} dims; dim {d} is out of range.")
            p.scale[int(d)], p.offset[int(d)] = 1.0, 0.0

    def keys(self) -> list[str]:
        return list(self.params.keys())

    def __contains__(self, key: str) -> bool:
        return key in self.params

    def _get(self, key: str) -> _KeyNorm:
        if key not in self.params:
            raise KeyError(f"Normalizer has no key '{key}'; it was fitted on {self.keys()}.")
        return self.params[key]

    def _affine(self, key, x, inverse: bool):
        p = self._get(key)
        if x.shape[-1] != p.scale.shape[0]:
            raise ValueError(f"Normalizer '{key}' expects last dim {p.scale.shape[0]}, got shape {tuple(x.shape)}.")
        if isinstance(x, np.ndarray):
            scale, offset = p.scale.cpu().numpy(), p.offset.cpu().numpy()
        else:
            scale, offset = p.scale.to(x.device, x.dtype), p.offset.to(x.device, x.dtype)
        return (x - offset) / scale if inverse else x * scale + offset

    def normalize(self, key: str, x):
        return self._affine(key, x, inverse=False)

    def unnormalize(self, key: str, x):
        return self._affine(key, x, inverse=True)

    def normalize_dict(self, d: Mapping) -> dict:
        """Normalize the keys this normalizer knows; pass the others through unchanged."""
        return {k: self.normalize(k, v) if k in self.params else v for k, v in d.items()}
