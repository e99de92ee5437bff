"""Left-to-right token decoding on the same core: the control for masked discrete diffusion.

``AutoregressiveProcess`` (kind "ar") is teacher forcing: the core sees the chunk's tokens
shifted right by one (``[BOS]`` first; the codec's ``[MASK]`` id serves as BOS), attends
causally, and is trained with cross-entropy at every position. ``AutoregressiveSampler``
decodes one token per network pass, keeping every layer's K/V (``DiT.extend``), greedily by
default. Nothing is noised, so every token's level is 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dp.errors import ConfigError


class AutoregressiveProcess:
    kind = "ar"

    def __init__(self, bos_id: int, label_smoothing: float = 0.0):
        self.bos_id, self.label_smoothing = bos_id, label_smoothing

    def sample_level(self, shape, device=None, generator=None) -> torch.Tensor:
        return torch.zeros(shape, device=device)

    def corrupt(self, x0: torch.Tensor, level: torch.Tensor, generator=None):
        """ids [B, N] -> (the input: ids shifted right behind BOS, None)."""
        return torch.cat([torch.full_like(x0[:, :1], self.bos_id), x0[:, :-1]], dim=1), None

    def loss(self, logits, x0, aux, level, mask=None) -> torch.Tensor:
        where = torch.ones_like(x0, dtype=torch.bool) if mask is None else mask
        return F.cross_entropy(logits[where].float(), x0[where], label_smoothing=self.label_smoothing)

    def prior(self, shape, device=None, generator=None) -> torch.Tensor:
        return torch.full(shape, self.bos_id, dtype=torch.long, device=device)

    def to_x0(self, logits, x_t, level) -> torch.Tensor:
        return logits.argmax(-1)

    def model_input(self, x_t, level) -> torch.Tensor:
        return x_t

    def model_level(self, x_t, level) -> torch.Tensor:
        return torch.zeros(x_t.shape, device=x_t.device)


class AutoregressiveSampler:
    """One pass per token, left to right, with a K/V cache; ``temperature`` 0 is greedy."""

    name = "autoregressive"
    process_kinds = ("ar",)
    fixed_levels = False

    def __init__(self, steps: int = 1, temperature: float = 0.0):
        if temperature < 0:
            raise ConfigError(f"autoregressive: temperature must be >= 0, got {temperature}.")
        self.steps, self.temperature = int(steps), float(temperature)  # steps: unused (one pass per token)

    def check(self, policy) -> None:
        if not getattr(policy, "causal", False):
            raise ConfigError("sampler 'autoregressive' needs a policy trained with causal attention (policy=ar_tokens).")

    def reset(self) -> None:
        pass

    @torch.no_grad()
    def generate(self, ctx) -> torch.Tensor:
        policy, codec = ctx.policy, ctx.policy.codec
        b, n = codec.shape(ctx.batch)
        prev = ctx.prior()[:, :1]  # BOS
        past, out = None, []
        for i in range(n):
            h, past = policy.dit.extend(codec.encode_at(prev, i), torch.zeros(b, 1, device=prev.device), ctx.cache, past)
            logits = codec.decode(h)[:, 0].float()
            if self.temperature > 0:
                prev = torch.multinomial((logits / self.temperature).softmax(-1), 1, generator=ctx.generator)
            else:
                prev = logits.argmax(-1, keepdim=True)
            out.append(prev)
        return torch.cat(out, dim=1)
