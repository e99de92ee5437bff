"""`policy=pad`: PAD (Prediction with Action), future frames and actions denoised jointly in one DiT.

    batch["obs"]["image"]: uint8 [B, To + F, 3, H, W] at ``key_offsets["image"]``, e.g. [-1, 0, 8]:
    the To current frames (offsets -(To-1) .. 0), then F future frames (offsets > 0)
    batch["obs"]["agent_pos"]: [B, To, S]; batch["action"]: [B, H, A]

Tokens, one sequence through the shared core:

    prefix (level 0, cached once per prediction):  state tokens (a token per step and low-dim
        key) and the current frames' patch tokens
    denoised (one level per sample):               future-frame patch tokens, action tokens

Prefix tokens attend only to the prefix, so the current frames never see the actions; the
``token_mask`` keeps future-frame tokens from attending to action tokens, so the whole image
pathway is action-independent (PAD's attention mask), while action tokens attend to
everything. The instruction enters as the adaLN context (PAD: timestep + text embedding).
Frame and action outputs have their own heads (``FramesAndActionsCodec``). Loss: action +
``image_loss_weight`` x image, each a masked mean: padded future frames (past the episode's
end) are left out of the image loss, and samples with ``has_action`` False (action-free video,
``task.video_datasets``) out of the action loss. ``predict`` returns the actions and the
predicted frames; ``predict_action`` the actions.

Frames are patches of pixels scaled to [-1, 1] (``FramePatchCodec``; see dp/video/predictor.py
for why pixels), 12 px patches at 84 px.
"""
from __future__ import annotations

import torch

from dp.core import DiT
from dp.core.codecs import (
    ContinuousActionCodec, FramePatchCodec, FramesAndActionsCodec, pixels_to_unit, unit_to_image,
)
from dp.diffusion import GaussianProcess
from dp.encoders.image import random_shift
from dp.encoders.language import make_language_encoder
from dp.encoders.obs import ObsEncoder, lowdim_keys
from dp.errors import ConfigError
from dp.policies.denoising import DenoisingPolicy
from dp.policies.dit import DEFAULT_PROCESS, DEFAULT_SAMPLER
from dp.runtime.history import ObservationHistory


class PADPolicy(DenoisingPolicy):
    def __init__(
        self,
        shape_meta: dict,
        key_offsets: dict,
        camera: str = "image",
        horizon: int = 16,
        n_obs_steps: int = 1,
        n_action_steps: int = 8,
        dim: int = 192,
        depth: int = 6,
        heads: int = 6,
        mlp_ratio: float = 4.0,
        patch: int = 12,
        action_patch: int = 4,
        image_loss_weight: float = 1.0,
        shift: int = 0,
        language: dict | None = None,
        process: dict | None = None,
        sampler: dict | None = None,
        initial_noise: str = "call",
    ):
        config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        config["_target_"] = f"{type(self).__module__}.{type(self).__qualname__}"
        shape = list((shape_meta.get("obs") or {}).get(camera) or [])
        if len(shape) != 3:
            raise ConfigError(f"policy=pad predicts one camera [3, H, W]; shape_meta['obs'][{camera!r}] is "
                              f"{shape or 'missing'}. Train on a store collected with obs=image.")
        offsets = [int(o) for o in (key_offsets or {}).get(camera) or []]
        current = list(range(-(n_obs_steps - 1), 1))
        if offsets[: len(current)] != current or not offsets[len(current):] or \
                any(b <= a for a, b in zip(offsets, offsets[1:])):
            raise ConfigError(f"policy.key_offsets[{camera!r}] must be the {n_obs_steps} current frame offset(s) "
                              f"{current} followed by increasing future offsets > 0, e.g. {current + [8]}; got {offsets}.")
        if image_loss_weight < 0:
            raise ConfigError(f"image_loss_weight must be >= 0, got {image_loss_weight}.")
        if not 0 <= int(shift) < min(int(v) for v in shape[1:]) // 2:
            raise ConfigError(f"policy.shift must be 0 (off) or a few pixels, under half the frame {shape[1:]}; got {shift}.")
        lowdim = {k: shape_meta["obs"][k] for k in lowdim_keys(shape_meta)}
        if not lowdim:
            raise ConfigError("policy=pad needs a low-dim observation besides the camera (task.obs=image gives "
                              f"agent_pos); shape_meta['obs'] holds {sorted(shape_meta['obs'])}.")
        self.camera, self.offsets, self.image_loss_weight = camera, offsets, float(image_loss_weight)
        self.shift = int(shift)
        n_future = len(offsets) - n_obs_steps
        c, h, w = (int(v) for v in shape)
        action_dim = int(shape_meta["action"][0])
        process = GaussianProcess(**{**DEFAULT_PROCESS, **(process or {})})
        obs_encoder = ObsEncoder({**shape_meta, "obs": lowdim}, dim, n_obs_steps)
        dit = DiT(dim, depth, heads, mlp_ratio)
        frames = FramePatchCodec(n_obs_steps + n_future, c, h, w, dim, patch)
        codec = FramesAndActionsCodec(frames, ContinuousActionCodec(action_dim, dim, horizon, action_patch),
                                      first_future=n_obs_steps, n_future=n_future)
        language = make_language_encoder(language, list(shape_meta.get("instructions") or []), dim) if language else None
        super().__init__(
            config, shape_meta=shape_meta, horizon=horizon, n_obs_steps=n_obs_steps, n_action_steps=n_action_steps,
            obs_encoder=obs_encoder, language=language, codec=codec, process=process, dit=dit,
            sampler={**DEFAULT_SAMPLER, **(sampler or {})}, initial_noise=initial_noise)
        self.token_mask = codec.token_mask()

    # -------------------------------------------------------------- parts
    def new_history(self) -> ObservationHistory:
        """The low-dim keys and the camera, To steps."""
        return super().new_history([*self.obs_encoder.keys, self.camera], [self.camera])

    def encode_obs(self, obs: dict, levels: torch.Tensor | None = None, prefix_step: int | None = None):
        """Normalized obs (the camera's first To frames are the current ones) -> the condition
        cache: prefix [state tokens, current-frame patch tokens], the instruction as context."""
        current = pixels_to_unit(obs[self.camera][:, : self.n_obs_steps])
        state = self.obs_encoder({k: obs[k] for k in self.obs_encoder.keys})
        tokens = torch.cat([state, self.codec.frames.encode(current.to(state.dtype))], dim=1)
        context = None
        if self.language is not None:
            context = self.language(self._instructions(obs, tokens.shape[0]))
        return self.dit.encode_condition(tokens, context=context, levels=levels, prefix_step=prefix_step)

    # -------------------------------------------------------------- training
    def compute_loss(self, batch: dict) -> dict[str, torch.Tensor]:
        frames = batch["obs"][self.camera]
        if frames.shape[1] != len(self.offsets):
            raise ConfigError(f"batch['obs'][{self.camera!r}] holds {frames.shape[1]} frames; policy=pad reads "
                              f"{len(self.offsets)} (key_offsets {self.offsets}): train with this policy's key_offsets.")
        if self.shift:  # the current and future frames of a sample move together
            frames = random_shift(frames, self.shift)
            batch = {**batch, "obs": {**batch["obs"], self.camera: frames}}
        obs = self.with_dataset_language(self.normalize_obs(batch["obs"]), batch)
        future = self.codec.frames.patchify(pixels_to_unit(frames[:, self.n_obs_steps:]))
        x0 = self.codec.pack(future, self.normalizer.normalize("action", batch["action"].float()))
        cache = self.encode_obs(obs)
        b = x0.shape[0]
        level = self.process.sample_level((b,), device=x0.device)[:, None].expand(b, x0.shape[1])
        x_t, noise = self.process.corrupt(x0, level)
        err = (self.network(x_t, level, cache).float() - self.process.target(x0, noise, level)).pow(2)
        image_err, action_err = self.codec.unpack(err)                    # [B, F, P, C*p*p], [B, H, A]
        image_mask = torch.ones(b, future.shape[1], device=x0.device)
        pad = (batch.get("pad_mask") or {}).get(self.camera)
        if pad is not None:
            image_mask = pad[:, self.n_obs_steps:].to(image_mask.dtype)
        action_mask = batch["has_action"].to(x0.dtype) if "has_action" in batch else torch.ones(b, device=x0.device)
        image_loss = (image_err.mean((2, 3)) * image_mask).sum() / image_mask.sum().clamp_min(1.0)
        action_loss = (action_err.mean((1, 2)) * action_mask).sum() / action_mask.sum().clamp_min(1.0)
        return {"loss": action_loss + self.image_loss_weight * image_loss, "action_loss": action_loss.detach(),
                "image_loss": image_loss.detach()}

    # -------------------------------------------------------------- inference
    @torch.inference_mode()
    def predict(self, obs: dict, committed: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """obs (the camera's To current frames) -> {"action": [B, H, A] env units, "frames":
        the predicted future frames [B, F, 3, H, W] in [0, 1]}."""
        obs = self.normalize_obs(self.obs_to_device(obs))
        x = self.sample_target(obs, committed)
        return {"action": self.normalizer.unnormalize("action", self.codec.output(x)),
                "frames": unit_to_image(self.codec.future_frames(x))}

    def _committed_slice(self, committed, b: int):
        """Committed actions sit in the action rows, after the frame rows, zero-padded to the row width."""
        known = super()._committed_slice(committed, b)
        if known is None:
            return None
        rows, values = known
        shift = self.codec.frame_rows
        values = torch.nn.functional.pad(values, (0, self.codec.width - values.shape[-1]))
        return slice(rows.start + shift, rows.stop + shift), values
