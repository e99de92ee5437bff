"""Every sampler by name: the Gaussian samplers and the ones that keep state or need the
policy's help (streaming: its buffer; truncated: its anchors)."""
from __future__ import annotations

from dp.diffusion.autoregressive import AutoregressiveSampler
from dp.diffusion.masked import MaskedSampler
from dp.diffusion.samplers import SAMPLERS, gaussian_sampler
from dp.diffusion.streaming import StreamingSampler
from dp.diffusion.truncated import TruncatedSampler
from dp.errors import ConfigError

POLICY_SAMPLERS = {"streaming": StreamingSampler, "truncated": TruncatedSampler, "masked": MaskedSampler,
                   "autoregressive": AutoregressiveSampler}


def make_sampler(name: str, steps: int = 10, **options):
    """A sampler by name. ``options`` go to samplers that take them (streaming: ``base``;
    truncated: ``level``, ``fallback_score``, ``fallback``, ``fallback_steps``; masked: ``temperature``,
    ``remask``)."""
    if name in POLICY_SAMPLERS:
        return POLICY_SAMPLERS[name](steps, **options)
    if name not in SAMPLERS:
        raise ConfigError(f"sampler must be one of {sorted(SAMPLERS) + list(POLICY_SAMPLERS)}, got {name!r}.")
    if options:
        raise ConfigError(f"sampler {name!r} takes no options besides steps; got {sorted(options)}.")
    return gaussian_sampler(name, steps)
