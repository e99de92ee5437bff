"""`policy=video`: future frames of one camera from its context frames, on the shared DiT core.

    batch["obs"]["image"]: uint8 [B, T, 3, H, W] at the time offsets ``key_offsets["image"]``
    (e.g. [-2, 0, 2, 4, 6, 8, 10, 12]: two context frames, offsets <= 0, and six future ones)

Every frame becomes P = (H/p)(W/p) patch tokens (``FramePatchCodec``, pixel space scaled to
[-1, 1]); the clip is one frame-major sequence of T*P tokens through one DiT. Context frames
sit at level 0 and are given, future frames are noised. In training each future frame draws
its own level (diffusion forcing), so the model learns every mix of clean and noisy frames
and ``rollout`` can go past the trained clip by feeding its predictions back as context.
Padded future frames (beyond an episode's end; ``pad_mask``) are left out of the loss.

Why pixels, not latents: one training stage, PSNR measured on what the model outputs, and at
84 px with 12 px patches a frame is 49 tokens, as short as a small autoencoder's latents would
make it; the autoencoder's own reconstruction error would otherwise cap the PSNR.

Attention over the clip (``attention``): ``full`` (dense), ``factorized`` (temporal then
spatial layers, VDT/Latte) or ``sparse`` (Sparse VideoGen's per-head online profiling).
Any Gaussian sampler samples it: context frames are held at level 0 by the sampler's
per-token level grid.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

from dp.core import DiT
from dp.core.attention import FrameLayout, SparseState, video_kernels
from dp.core.codecs import FramePatchCodec, pixels_to_unit, unit_to_image
from dp.data.normalizer import Normalizer
from dp.diffusion import GaussianProcess, make_sampler
from dp.diffusion.protocol import check_pairing
from dp.errors import ConfigError

DEFAULT_PROCESS = {"schedule": "vp_cosine", "prediction": "x0", "train_steps": 1000, "clip_x0": 1.0}
DEFAULT_SAMPLER = {"name": "ddim", "steps": 10}
DEFAULT_SPARSE = {"dense_calls": 1, "sample_rows": 16}


class VideoPredictor(nn.Module):
    def __init__(
        self,
        shape_meta: dict,
        key_offsets: dict,
        camera: str = "image",
        patch: int = 12,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        attention: str = "full",
        sparse: dict | None = None,
        process: dict | None = None,
        sampler: dict | None = None,
        horizon: int = 1,
        n_obs_steps: int = 1,
        n_action_steps: int = 1,
    ):
        super().__init__()
        self.config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.config["_target_"] = f"{type(self).__module__}.{type(self).__qualname__}"
        shape = list((shape_meta.get("obs") or {}).get(camera) or [])
        if len(shape) != 3:
            raise ConfigError(f"policy=video predicts one camera [3, H, W]; shape_meta['obs'][{camera!r}] is "
                              f"{shape or 'missing'} (obs: {sorted((shape_meta.get('obs') or {}))}). Train on a store "
                              "collected with obs=image, and set policy.camera to its image observation.")
        offsets = list((key_offsets or {}).get(camera) or [])
        if offsets != sorted(set(offsets)) or not any(o <= 0 for o in offsets) or not any(o > 0 for o in offsets):
            raise ConfigError(f"policy.key_offsets[{camera!r}] must be strictly increasing time offsets with at least "
                              f"one context frame (<= 0) and one future frame (> 0), e.g. [-2, 0, 2, 4, 6, 8]; "
                              f"got {offsets}.")
        self.camera, self.offsets = camera, [int(o) for o in offsets]
        self.n_context = sum(o <= 0 for o in offsets)
        c, h, w = (int(v) for v in shape)
        self.codec = FramePatchCodec(len(offsets), c, h, w, dim, patch)
        self.dit = DiT(dim, depth, heads, mlp_ratio)  # no condition tokens: the context frames are in the clip
        self.layout = FrameLayout(len(offsets), self.codec.patches)
        self.sparse_state = SparseState(**{**DEFAULT_SPARSE, **(sparse or {})})
        self.attention = attention
        self.set_attention(attention)
        self.process = GaussianProcess(**{**DEFAULT_PROCESS, **(process or {})})
        self.sampler = make_sampler(**{**DEFAULT_SAMPLER, **(sampler or {})})
        check_pairing(self.sampler, self.process)
        self.normalizer = Normalizer()  # pixels are scaled, not fitted; kept for the checkpoint format
        self.generator: torch.Generator | None = None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def set_attention(self, attention: str) -> None:
        """``full`` | ``factorized`` | ``sparse``: the same weights, another attention pattern."""
        self.dit.set_attention(video_kernels(attention, self.layout, self.dit.depth, self.sparse_state))
        self.attention = attention
        self.config["attention"] = attention

    def set_sampler(self, name: str, steps: int, **options) -> None:
        sampler = make_sampler(name, steps, **options)
        check_pairing(sampler, self.process)
        self.sampler = sampler
        self.config["sampler"] = {"name": name, "steps": steps, **options}

    # -------------------------------------------------------------- training
    def network(self, x_t: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """Noisy clip [B, T, C, H, W] at per-frame levels [B, T] -> raw output, same shape."""
        tokens = self.codec.encode(self.process.model_input(x_t, level))
        return self.codec.decode(self.dit(tokens, self.codec.token_levels(level), cache=self.dit.encode_condition()))

    def compute_loss(self, batch: dict) -> dict[str, torch.Tensor]:
        x0 = pixels_to_unit(batch["obs"][self.camera])  # [B, T, C, H, W]
        b, t = x0.shape[:2]
        level = self.process.sample_level((b, t), device=x0.device)
        level[:, : self.n_context] = 0.0
        x_t, noise = self.process.corrupt(x0, level)
        x_t[:, : self.n_context] = x0[:, : self.n_context]
        future = torch.zeros(b, t, dtype=torch.bool, device=x0.device)
        future[:, self.n_context:] = True
        pad = batch.get("pad_mask", {}).get(self.camera)
        mask = future if pad is None else future & pad.to(torch.bool)
        loss = self.process.loss(self.network(x_t, level), x0, noise, level, mask)
        return {"loss": loss}

    # -------------------------------------------------------------- prediction
    @torch.inference_mode()
    def predict_frames(self, context: torch.Tensor) -> torch.Tensor:
        """Context frames uint8-range [B, Tc, C, H, W] (at the context offsets) -> the future
        frames [B, Tf, C, H, W] as floats in [0, 1]."""
        context = torch.as_tensor(context, device=self.device)
        if context.shape[1] != self.n_context:
            raise ValueError(f"predict_frames takes the {self.n_context} context frame(s) at offsets "
                             f"{self.offsets[: self.n_context]}; got {context.shape[1]}.")
        ctx = pixels_to_unit(context)
        b = ctx.shape[0]
        x = self.process.prior(self.codec.shape(b), device=self.device, generator=self.generator)
        x[:, : self.n_context] = ctx
        grid = self.sampler.levels(self.process, self.device)[:, None, None].expand(-1, b, self.layout.frames).clone()
        grid[:, :, : self.n_context] = 0.0  # context frames stay where they are: level 0, given
        calls = itertools.count()

        def denoise(x_t, level):
            self.sparse_state.call = next(calls)
            x0 = self.process.to_x0(self.network(x_t, level).float(), x_t, level)
            x0[:, : self.n_context] = ctx
            return x0

        out = self.sampler.sample(denoise, self.process, x, levels=grid, generator=self.generator)
        return unit_to_image(out[:, self.n_context:])

    @torch.inference_mode()
    def rollout(self, context: torch.Tensor, n_future: int) -> torch.Tensor:
        """Predict ``n_future`` frames past the context by feeding predictions back as context
        (needs evenly spaced offsets). context uint8-range [B, Tc, C, H, W] -> [B, n_future, C, H, W]
        floats in [0, 1], at the offsets' spacing."""
        gaps = {b - a for a, b in zip(self.offsets, self.offsets[1:])}
        if len(gaps) != 1:
            raise ConfigError(f"rollout needs evenly spaced offsets; this model's are {self.offsets}.")
        frames = [torch.as_tensor(context, device=self.device).float()]
        made = 0
        while made < n_future:
            ctx = torch.cat(frames, dim=1)[:, -self.n_context:]
            new = self.predict_frames(ctx) * 255.0
            frames.append(new)
            made += new.shape[1]
        return (torch.cat(frames[1:], dim=1)[:, :n_future] / 255.0).clamp(0.0, 1.0)
