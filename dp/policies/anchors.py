"""DiffusionDrive's truncated diffusion as a part of the DiT policy (``policy.anchors``).

Training adds ``anchor_loss`` to the usual diffusion loss; ``fit_to_data`` sets the anchors
(k-means over the dataset's normalized action chunks) before training; ``truncated_sample``
is ``sampler=truncated``. The mechanism is in ``dp.diffusion.truncated``; this mixin only
needs the host policy's ``anchors`` [K, H, A] buffer, ``network(..., with_score=True)``,
``encode_obs``, ``process``, ``normalizer`` and ``_denoiser``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dp.diffusion.truncated import kmeans, nearest_anchor, sigmoid_focal_loss
from dp.policies.base import inpaint, select_rows


class AnchorBranch:
    def anchor_loss(self, obs: dict, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DiffusionDrive's branch on the first ``anchors.batch`` samples: every anchor noised to
        a level in (0, train_level], denoised to x0 with a score; focal loss on the scores with
        the anchor nearest the demonstration as the positive, L1 on that anchor's x0 only.
        obs: normalized, x0: normalized [B, H, A] -> (focal loss, L1)."""
        ba, k = min(int(self.anchor_cfg["batch"]), x0.shape[0]), self.anchors.shape[0]
        cache = self.encode_obs(select_rows(obs, slice(0, ba))).repeat(k)
        start = self.anchors.repeat(ba, 1, 1)  # [ba * k, H, A], sample-major like cache.repeat
        level = torch.rand(ba * k, 1, device=x0.device) * self.anchor_cfg["train_level"]
        level = level.clamp_min(1e-3).expand(-1, self.horizon)
        x_t = self.process.add_noise(start, torch.randn_like(start), level)
        pred, score = self.network(x_t, level, cache, with_score=True)
        x0_hat = self.process.to_x0(pred.float(), x_t, level).view(ba, k, self.horizon, -1)
        win = nearest_anchor(x0[:ba], self.anchors)
        rec = F.l1_loss(x0_hat[torch.arange(ba, device=x0.device), win], x0[:ba])
        return sigmoid_focal_loss(score.float().view(ba, k), win), rec

    def fit_to_data(self, dataset) -> None:
        """Data-dependent setup before training (after ``set_normalizer``): the anchors, k-means
        over every training window's normalized action chunk."""
        if self.anchor_score is None:
            return
        chunks = torch.as_tensor(dataset.get_batch(np.arange(len(dataset)))["action"])
        chunks = self.normalizer.normalize("action", chunks.to(self.device).float())
        k = self.anchors.shape[0]
        self.anchors.copy_(kmeans(chunks.flatten(1), k).view(k, self.horizon, -1).to(self.anchors))

    def truncated_sample(self, obs: dict, cache, b: int, known) -> torch.Tensor:
        """Every anchor noised to ``sampler.level``, ``sampler.steps`` DDIM steps on all of them
        in one batch, the best-scoring chunk per row; rows whose best score is below
        ``sampler.fallback_score`` are sampled in full instead. -> normalized [B, H, A]."""
        sampler, k = self.sampler, self.anchors.shape[0]
        cache_k = cache.repeat(k)
        start = self.anchors.repeat(b, 1, 1)
        grid = sampler.levels(self.device)
        noise = torch.randn(start.shape, device=self.device, generator=self.generator)
        x = self.process.add_noise(start, noise, grid[0].expand(b * k, self.horizon))
        known_k = None if known is None else (known[0], known[1].repeat_interleave(k, dim=0))
        scores = {}

        def denoise(x_t, level):
            pred, scores["last"] = self.network(x_t, level, cache_k, with_score=True)
            return inpaint(self.process.to_x0(pred.float(), x_t, level), known_k)

        x0 = sampler.base.sample(denoise, self.process, x, levels=grid, generator=self.generator)
        score = scores["last"].float().view(b, k)
        out = x0.view(b, k, self.horizon, -1)[torch.arange(b, device=self.device), score.argmax(1)]
        unsure = score.max(1).values.sigmoid() < sampler.fallback_score  # outside every anchor's support
        sampler.rows += b
        if bool(unsure.any()):
            rows = unsure.nonzero().flatten()
            sampler.fallbacks += len(rows)
            denoise_full = self._denoiser(self.encode_obs(select_rows(obs, rows)),
                                          None if known is None else (known[0], known[1][rows]))
            out[rows] = sampler.fallback.sample(denoise_full, self.process, self.prior_sample(len(rows)),
                                                generator=self.generator)
        return out
