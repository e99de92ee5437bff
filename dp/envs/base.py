"""Pieces shared by every task family: the expert protocol and obs-mode checking."""
from __future__ import annotations

from typing import Protocol

import numpy as np

from dp.envs.errors import EnvValueError

OBS_MODES = ("state", "image")


class Expert(Protocol):
    """A scripted demonstrator. ``act`` takes the env's dict observation."""

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode; ``seed`` makes the expert's own choices repeatable."""
        ...

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray: ...


def check_obs_mode(obs: str) -> str:
    if obs not in OBS_MODES:
        raise EnvValueError(f"obs must be one of {OBS_MODES}, got {obs!r}.")
    return obs
