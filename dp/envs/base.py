"""Pieces shared by every task family: the expert protocol and obs-mode checking."""
from __future__ import annotations

from typing import Protocol

import numpy as np

from dp.envs.errors import EnvOptionError, EnvValueError

OBS_MODES = ("state", "image")


class Expert(Protocol):
    """A scripted demonstrator. ``act`` takes the env's dict observation."""

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode; ``seed`` makes the expert's own choices repeatable."""
        ...

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray: ...


def check_expert_options(name: str, options: dict, accepted: tuple[str, ...] = ()) -> None:
    """``task.expert_options`` (dp-collect) must be options ``name``'s scripted expert takes."""
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = f"takes only {', '.join(accepted)}" if accepted else "takes no options"
        raise EnvOptionError(f"task.expert_options: {name}'s scripted expert {takes}; got {unknown}. "
                             "Remove them from task.expert_options.")


def check_obs_mode(obs: str) -> str:
    if obs not in OBS_MODES:
        raise EnvValueError(f"obs must be one of {OBS_MODES}, got {obs!r}.")
    return obs
