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


NOISE_STREAM = 0xDA27  # second word of the noise generator's seed, so it never replays the env's own stream


class PerturbedExpert:
    """DART's noisy demonstrator (Laskey et al., 2017): the env executes the expert's action plus
    Gaussian noise of std ``action_noise`` (in the action's own units, clipped to the action space)
    while the stored label stays the expert's own action. The demonstrations then show the expert
    steering back from drift of the kind a learned policy makes; a clean expert never leaves its
    path, so its data holds no such states. The noise is drawn from the episode seed (repeatable)."""

    def __init__(self, expert: Expert, action_noise: float):
        self.expert, self.action_noise = expert, float(action_noise)
        self.rng = np.random.default_rng()

    def reset(self, seed: int | None = None) -> None:
        self.expert.reset(seed)
        self.rng = np.random.default_rng(None if seed is None else [seed, NOISE_STREAM])

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.expert.act(obs)

    def perturb(self, action: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """[A] the action to execute: ``action`` plus the noise, within [low, high]."""
        noisy = action + self.rng.normal(0.0, self.action_noise, size=np.shape(action))
        return np.clip(noisy, low, high).astype(np.asarray(action).dtype)


def perturbed(expert: Expert, action_noise) -> Expert:
    """``expert`` as a DART demonstrator (``PerturbedExpert``) when ``action_noise`` > 0, else itself."""
    try:
        sigma = float(action_noise)
    except (TypeError, ValueError):
        sigma = float("nan")
    if not (np.isfinite(sigma) and sigma >= 0):
        raise EnvValueError(f"task.expert_options.action_noise: expected a number >= 0 (the std of the noise added "
                            f"to executed actions, e.g. 0.1), found {action_noise!r}.")
    return PerturbedExpert(expert, sigma) if sigma > 0 else expert


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
