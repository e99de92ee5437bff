"""Masked (absorbing-state) discrete diffusion over tokens, and its MaskGIT-style sampler.

A token's level is its masked state: 1 = ``[MASK]``, 0 = decoded. Training masks a
fraction r of each chunk's tokens, r drawn per sample from the schedule (``cosine``:
r = cos(pi/2 * u), MaskGIT; ``uniform``: r = u; u ~ U(0, 1]), and takes cross-entropy on
the masked positions only. The per-token level the core sees is that mask state, so a
decoded token reads as clean and a masked one as pure noise (dp's "every token carries its
own level", unchanged for discrete tokens).

``MaskedSampler`` (``sampler=masked``, R rounds): all tokens start masked; each round
predicts every token, samples the masked ones, and keeps a cosine-scheduled number masked,
chosen by confidence = log p + Gumbel noise whose temperature anneals linearly to 0.
Remasking rule (``remask="lowest"``): the ranking covers every token, the ones decoded in
earlier rounds included (their confidence is log p of their current value under this
round's prediction, without noise), so a decoded token that the model has grown unsure of
falls among the lowest and is masked again. Why this rule: it keeps MaskGIT's exact count
schedule (n masked after round r is fixed, so R rounds always finish), needs no threshold
to tune, and revisits exactly the tokens the model now rates below fresh predictions.
``remask="none"`` never masks a decoded token again (MaskGIT).

Temperature: 4.5 by default, MaskGIT's ``choice_temperature``. Ranking by log p alone favours
the majority mode: of two sampled values for a token that decides the mode, the minority one
has the lower log p, so it is kept less often than it was sampled (on the toy task, 150
episodes: temperature 1 gave modes 24% / 76%, temperature 4.5 gave 41% / 59%, the
demonstrations 38% / 62%, at the same 98% success).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dp.errors import ConfigError

SCHEDULES = ("cosine", "uniform")


class MaskedProcess:
    kind = "masked"

    def __init__(self, mask_id: int, schedule: str = "cosine", label_smoothing: float = 0.0):
        if schedule not in SCHEDULES:
            raise ConfigError(f"masked process schedule must be one of {SCHEDULES}, got {schedule!r}.")
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}.")
        self.mask_id, self.schedule, self.label_smoothing = mask_id, schedule, label_smoothing

    def mask_ratio(self, u: torch.Tensor) -> torch.Tensor:
        return torch.cos(math.pi / 2 * (1 - u)) if self.schedule == "cosine" else u

    def sample_level(self, shape, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mask ratios in (0, 1] of ``shape`` (one per sample)."""
        u = 1 - torch.rand(shape, device=device, generator=generator)  # (0, 1]
        return self.mask_ratio(u)

    def corrupt(self, x0: torch.Tensor, level: torch.Tensor, generator: torch.Generator | None = None):
        """ids [B, N], per-token level [B, N] (a sample's tokens share its ratio) -> (x_t, masked [B, N]):
        exactly round(ratio * N) >= 1 random tokens per sample become ``[MASK]``."""
        b, n = x0.shape
        count = (level[:, 0] * n).round().clamp(1, n).long()  # [B]
        order = torch.rand(b, n, device=x0.device, generator=generator).argsort(1)
        masked = torch.zeros_like(x0, dtype=torch.bool).scatter(1, order, torch.arange(n, device=x0.device)
                                                               .expand(b, n) < count[:, None])
        return torch.where(masked, torch.full_like(x0, self.mask_id), x0), masked

    def loss(self, logits: torch.Tensor, x0: torch.Tensor, masked: torch.Tensor, level: torch.Tensor,
             mask: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy on the masked positions (and where ``mask`` is True)."""
        where = masked if mask is None else masked & mask
        return F.cross_entropy(logits[where].float(), x0[where], label_smoothing=self.label_smoothing)

    def prior(self, shape, device=None, generator=None) -> torch.Tensor:
        return torch.full(shape, self.mask_id, dtype=torch.long, device=device)

    def to_x0(self, logits: torch.Tensor, x_t: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """Masked positions take the most likely bin; decoded ones keep their id."""
        return torch.where(x_t == self.mask_id, logits.argmax(-1), x_t)

    def model_input(self, x_t: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        return x_t

    def model_level(self, x_t: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """The per-token level the core sees: 1 for ``[MASK]``, 0 for a decoded token."""
        return (x_t == self.mask_id).to(torch.float32)


class MaskedSampler:
    """MaskGIT-style decoding in ``steps`` rounds (see the module docstring)."""

    name = "masked"
    process_kinds = ("masked",)
    fixed_levels = False

    def __init__(self, steps: int = 12, temperature: float = 4.5, remask: str = "lowest"):
        if steps < 1:
            raise ConfigError(f"masked: steps (rounds) must be >= 1, got {steps}.")
        if remask not in ("lowest", "none"):
            raise ConfigError(f"masked: remask must be 'lowest' or 'none', got {remask!r}.")
        self.steps, self.temperature, self.remask = int(steps), float(temperature), remask

    def network_calls(self) -> int:
        return self.steps

    def check(self, policy) -> None:
        pass

    def reset(self) -> None:
        pass

    def masked_after(self, r: int, n: int) -> int:
        """Tokens still masked after round r (0-based) of a chunk of n: cosine schedule, 0 at the end."""
        return int(math.floor(n * math.cos(math.pi / 2 * (r + 1) / self.steps)))

    def generate(self, ctx) -> torch.Tensor:
        process, g = ctx.process, ctx.generator
        x = ctx.prior()  # [B, N], all [MASK]
        b, n = x.shape
        for r in range(self.steps):
            is_masked = x == process.mask_id
            logp = ctx.network(x, is_masked.float()).float().log_softmax(-1)  # [B, N, K], levels = mask state
            sampled = torch.distributions.Categorical(logits=logp).sample() if g is None else \
                torch.multinomial(logp.exp().flatten(0, 1), 1, generator=g).view(b, n)
            candidate = torch.where(is_masked, sampled, x)
            conf = logp.gather(-1, candidate[..., None]).squeeze(-1)
            temp = self.temperature * (1 - (r + 1) / self.steps)
            if temp > 0:
                u = torch.rand(b, n, device=x.device, generator=g).clamp(1e-9, 1 - 1e-9)
                conf = torch.where(is_masked, conf + temp * -torch.log(-torch.log(u)), conf)
            if self.remask == "none":
                conf = torch.where(is_masked, conf, torch.full_like(conf, float("inf")))
            k = self.masked_after(r, n)
            x = candidate
            if k > 0:
                lowest = conf.topk(k, dim=1, largest=False).indices
                x = x.scatter(1, lowest, process.mask_id)
        return x
