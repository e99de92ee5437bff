"""DiffusionDrive's truncated diffusion as a policy plug-in (``policy.anchors``, ``sampler=truncated``).

The plug-in owns what truncated diffusion trains: the anchors [K, H, A] (k-means over the
dataset's normalized action chunks, ``fit_to_data``) and a score head on the core's output
tokens. It adds its training terms to the loss (``training_terms``) and samples for
``TruncatedSampler`` (``sample``). The mechanism (k-means, winner, focal loss) is in
``dp.diffusion.truncated``; the host is any ``DenoisingPolicy``.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dp.diffusion.truncated import kmeans, nearest_anchor, sigmoid_focal_loss
from dp.errors import ConfigError
from dp.policies.base import inpaint, select_rows

# count > 0 turns the branch on (DiffusionDrive: 20); train_level: anchors are noised up to it
# (DiffusionDrive: 50 of 1000 steps); batch: samples per training batch that run the branch (each
# with every anchor); weights as in DiffusionDrive
DEFAULT_ANCHORS = {"count": 0, "train_level": 0.05, "batch": 8, "cls_weight": 10.0, "rec_weight": 8.0}


def anchor_options(options: dict | None) -> dict:
    anchors = {**DEFAULT_ANCHORS, **(options or {})}
    unknown = sorted(set(anchors) - set(DEFAULT_ANCHORS))
    if unknown:
        raise ConfigError(f"unknown anchors option(s) {unknown}; allowed: {sorted(DEFAULT_ANCHORS)}.")
    return anchors


class AnchorPlugin(nn.Module):
    def __init__(self, options: dict, dim: int, horizon: int, action_dim: int, prediction: str):
        super().__init__()
        if prediction != "x0":
            raise ConfigError("anchors (truncated diffusion) need process.prediction 'x0', as DiffusionDrive: "
                              f"from a small level an anchor moves far, which eps/v targets cannot express; got "
                              f"{prediction!r}. Set policy.process.prediction=x0.")
        self.options = options
        self.score = nn.Linear(dim, 1)
        self.register_buffer("anchors", torch.zeros(int(options["count"]), horizon, action_dim))

    def scored(self, policy, x_t, level, cache) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw output [B, H, A], score [B] from the mean output token) of the host's core."""
        h = policy.denoiser_tokens(x_t, level, cache)
        return policy.codec.decode(h), self.score(h.mean(1)).squeeze(-1)

    def training_terms(self, policy, obs: dict, x0: torch.Tensor, out: dict) -> dict:
        """DiffusionDrive's branch on the first ``batch`` samples: every anchor noised to a level in
        (0, train_level], denoised to x0 with a score; focal loss on the scores with the anchor
        nearest the demonstration as the positive, L1 on that anchor's x0 only."""
        ba, k, horizon = min(int(self.options["batch"]), x0.shape[0]), self.anchors.shape[0], policy.horizon
        cache = policy.encode_obs(select_rows(obs, slice(0, ba))).repeat(k)
        start = self.anchors.repeat(ba, 1, 1)  # [ba * k, H, A], sample-major like cache.repeat
        level = (torch.rand(ba * k, 1, device=x0.device) * self.options["train_level"]).clamp_min(1e-3)
        level = level.expand(-1, horizon)
        x_t = policy.process.add_noise(start, torch.randn_like(start), level)
        pred, score = self.scored(policy, x_t, level, cache)
        x0_hat = policy.process.to_x0(pred.float(), x_t, level).view(ba, k, horizon, -1)
        win = nearest_anchor(x0[:ba], self.anchors)
        rec = F.l1_loss(x0_hat[torch.arange(ba, device=x0.device), win], x0[:ba])
        cls = sigmoid_focal_loss(score.float().view(ba, k), win)
        loss = out["loss"] + self.options["cls_weight"] * cls + self.options["rec_weight"] * rec
        return {**out, "diffusion_loss": out["loss"], "anchor_cls": cls, "anchor_rec": rec, "loss": loss}

    def fit_to_data(self, policy, dataset) -> None:
        """The anchors: k-means over every training window's normalized action chunk."""
        chunks = torch.as_tensor(dataset.get_batch(np.arange(len(dataset)))["action"])
        chunks = policy.normalizer.normalize("action", chunks.to(self.anchors.device).float())
        k = self.anchors.shape[0]
        self.anchors.copy_(kmeans(chunks.flatten(1), k).view(k, policy.horizon, -1).to(self.anchors))

    def sample(self, ctx, sampler) -> torch.Tensor:
        """Every anchor noised to ``sampler.level``, ``sampler.steps`` DDIM steps on all of them in
        one batch, the best-scoring chunk per row; rows whose best score is below
        ``sampler.fallback_score`` are sampled in full instead. -> normalized [B, H, A].

        ``ctx.noise``: the anchors' noise [B * K, H, A] (default: drawn here). Planned (``ctx.plan``,
        dp/deploy), nothing is read on the host: the best score per row is left in
        ``sampler.best_score`` [B] (logits) and the caller runs the fallback for the rows that need it."""
        policy, b, k = ctx.policy, ctx.batch, self.anchors.shape[0]
        cache_k = ctx.cache.repeat(k)
        start = self.anchors.repeat(b, 1, 1)
        grid = sampler.levels(start.device)
        noise = ctx.noise if ctx.noise is not None else torch.randn(start.shape, device=start.device,
                                                                      generator=ctx.generator)
        if noise.shape != start.shape:
            raise ValueError(f"truncated sampling takes noise for every anchor of every row, {tuple(start.shape)} "
                             f"(batch x {k} anchors, horizon, action); got {tuple(noise.shape)}.")
        x = policy.process.add_noise(start, noise, grid[0].expand(b * k, policy.horizon))
        known, known_k = ctx.known, None if ctx.known is None else (ctx.known[0], ctx.known[1].repeat_interleave(k, 0))
        scores, calls = {}, itertools.count()

        def denoise(x_t, level):
            cache_k.call = next(calls)  # a planned cache looks its level terms up by call
            pred, scores["last"] = self.scored(policy, x_t, level, cache_k)
            return inpaint(policy.process.to_x0(pred.float(), x_t, level), known_k)

        x0 = sampler.base.sample(denoise, policy.process, x, levels=grid, generator=ctx.generator, plan=ctx.plan)
        score = scores["last"].float().view(b, k)
        out = x0.view(b, k, policy.horizon, -1)[torch.arange(b, device=x0.device), score.argmax(1)]
        if ctx.plan is not None:
            sampler.best_score = score.max(1).values
            return out
        unsure = score.max(1).values.sigmoid() < sampler.fallback_score  # outside every anchor's support
        sampler.rows += b
        if bool(unsure.any()):
            rows = unsure.nonzero().flatten()
            sampler.fallbacks += len(rows)
            full = policy.denoiser(policy.encode_obs(select_rows(ctx.obs, rows)),
                                   None if known is None else (known[0], known[1][rows]))
            out[rows] = sampler.fallback.sample(full, policy.process, policy.prior_sample(len(rows)),
                                                generator=ctx.generator)
        return out
