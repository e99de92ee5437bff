"""What a noise process is to the rest of dp, and how a sampler says which processes it runs.

A policy composes a process with a codec, the core and a sampler; they meet only here:

    x_t, aux = process.corrupt(x0, level)              # training: aux is what loss needs (noise, mask)
    loss = process.loss(out, x0, aux, level, mask)     # per token, averaged where mask is True
    x = process.prior(shape)                           # the sampler's start (level 1)
    x0_hat = process.to_x0(out, x_t, level)            # the network's output -> clean estimate
    core_level = process.model_level(x_t, level)       # what the core's per-token level input is

``kind`` names the family ("gaussian"; a masked discrete process is "masked"), and every
sampler lists the kinds it supports in ``process_kinds``: ``check_pairing`` raises when a
policy is built (or its sampler swapped) with a pair that cannot work.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from dp.errors import ConfigError


@runtime_checkable
class Process(Protocol):
    kind: str

    def sample_level(self, shape, device=None, generator: torch.Generator | None = None) -> torch.Tensor: ...

    def corrupt(self, x0: torch.Tensor, level: torch.Tensor, generator: torch.Generator | None = None): ...

    def loss(self, out: torch.Tensor, x0: torch.Tensor, aux, level: torch.Tensor,
             mask: torch.Tensor | None = None) -> torch.Tensor: ...

    def prior(self, shape, device=None, generator: torch.Generator | None = None) -> torch.Tensor: ...

    def to_x0(self, out: torch.Tensor, x_t: torch.Tensor, level: torch.Tensor) -> torch.Tensor: ...

    def model_input(self, x_t: torch.Tensor, level: torch.Tensor) -> torch.Tensor: ...

    def model_level(self, x_t: torch.Tensor, level: torch.Tensor) -> torch.Tensor: ...


def check_pairing(sampler, process) -> None:
    """Raise ConfigError unless ``sampler`` supports ``process``'s kind."""
    kinds = tuple(getattr(sampler, "process_kinds", ()))
    if process.kind not in kinds:
        raise ConfigError(f"sampler {sampler.name!r} runs {list(kinds)} processes; this policy's process is "
                          f"{process.kind!r}. Choose a sampler for it (policy.sampler / sampler=...).")
