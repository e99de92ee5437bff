"""`policy=mlp_bc`: plain regression baseline. Observation tokens -> MLP -> action chunk,
trained with MSE on normalized actions. It predicts the conditional mean, so on
multimodal demonstrations it averages the modes (the point of comparing against it)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dp.encoders.obs import ObsEncoder, lowdim_keys
from dp.policies.base import Policy


class MLPBCPolicy(Policy):
    def __init__(self, shape_meta: dict, horizon: int = 16, n_obs_steps: int = 2, n_action_steps: int = 8,
                 dim: int = 128, hidden: int = 512, layers: int = 3, image_encoder: dict | None = None):
        config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        config["_target_"] = f"{type(self).__module__}.{type(self).__qualname__}"
        super().__init__(config)
        self.horizon, self.n_obs_steps, self.n_action_steps = horizon, n_obs_steps, n_action_steps
        self.action_dim = int(shape_meta["action"][0])
        self.lowdim = lowdim_keys(shape_meta)
        self.obs_encoder = ObsEncoder(shape_meta, dim, n_obs_steps, image_encoder)
        mods, width = [], self.obs_encoder.n_tokens * dim
        for _ in range(layers - 1):
            mods += [nn.Linear(width, hidden), nn.Mish()]
            width = hidden
        mods.append(nn.Linear(width, horizon * self.action_dim))
        self.mlp = nn.Sequential(*mods)

    def normalized_keys(self) -> list[str]:
        return ["action", *self.lowdim]

    def _forward(self, obs: dict) -> torch.Tensor:
        obs = dict(obs)
        for k in self.lowdim:
            obs[k] = self.normalizer.normalize(k, obs[k].float())
        tokens = self.obs_encoder({k: obs[k] for k in self.obs_encoder.keys})
        return self.mlp(tokens.flatten(1)).reshape(-1, self.horizon, self.action_dim)

    def compute_loss(self, batch: dict) -> dict[str, torch.Tensor]:
        target = self.normalizer.normalize("action", batch["action"].float())
        return {"loss": F.mse_loss(self._forward(batch["obs"]), target)}

    @torch.inference_mode()
    def predict_action(self, obs: dict) -> torch.Tensor:
        return self.normalizer.unnormalize("action", self._forward(self.obs_to_device(obs)))
