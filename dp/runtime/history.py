"""A policy's observation history: the last ``n_obs_steps`` observations of each batch row, in
the layout the policy reads. Callers push what an env or robot returns and never convert it.

    history = policy.new_history()
    history.push({"state": s [B, S], "image": img [B, H, W, 3] uint8, "instruction": [B strings]})
    history.push_one(robot.observe())          # one robot: arrays without the batch axis
    obs = history.batch()                      # {"state": [B, To, S], "image": [B, To, 3, H, W], "instruction"}

The first push of an episode fills every slot (the first frame repeated, as diffusion_policy's
MultiStepWrapper does). Images arrive channels last (H, W, C) and leave channels first.
``sources`` maps a policy observation to the env keys it is made of, as ``task.obs_keys`` made
it from store keys: several low-dim keys are concatenated, several cameras stacked as views
``[B, To, V, 3, H, W]``.
"""
from __future__ import annotations

from collections import deque

import numpy as np
import torch

from dp.errors import ConfigError
from dp.keys import split_key


class ObservationHistory:
    def __init__(self, keys: list[str], cameras: list[str], n_obs_steps: int,
                 sources: dict[str, list[str]] | None = None):
        self.keys, self.cameras, self.n_obs_steps = list(keys), set(cameras), n_obs_steps
        self.sources = {k: list((sources or {}).get(k, [k])) for k in self.keys}
        self.steps: deque[dict[str, torch.Tensor]] = deque(maxlen=n_obs_steps)
        self.instruction: list[str] | None = None

    def clear(self) -> None:
        self.steps.clear()
        self.instruction = None

    def __len__(self) -> int:
        return len(self.steps)

    def push(self, obs: dict) -> None:
        """One step for every batch row: {key: array [B, ...]} (env units, images HWC)."""
        missing = [s for k in self.keys for s in self.sources[k] if split_key(s)[0] not in obs]
        if missing:
            raise ConfigError(f"the observation lacks {missing}: this policy reads {self.sources}, got {sorted(obs)}.")
        step = {}
        for k in self.keys:
            parts = [_read(obs, s) for s in self.sources[k]]
            if k in self.cameras:
                if any(x.dim() != 4 for x in parts):
                    raise ConfigError(f"camera {k!r}: expected [B, H, W, C] (channels last) from "
                                      f"{self.sources[k]}, got {[tuple(x.shape) for x in parts]}.")
                parts = [x.permute(0, 3, 1, 2) for x in parts]
                step[k] = parts[0] if len(parts) == 1 else torch.stack(parts, dim=1)  # [B, V, C, H, W]
            else:
                step[k] = parts[0] if len(parts) == 1 else torch.cat([x.reshape(x.shape[0], -1) for x in parts], -1)
        if "instruction" in obs:
            texts = obs["instruction"]
            self.instruction = [texts] if isinstance(texts, str) else list(texts)
        if not self.steps:
            self.steps.extend([step] * self.n_obs_steps)
        else:
            self.steps.append(step)

    def push_one(self, obs: dict) -> None:
        """One step of a single robot: arrays without the batch axis."""
        self.push({k: (v if k == "instruction" else np.asarray(v)[None]) for k, v in obs.items()})

    def batch(self) -> dict:
        """{key: [B, To, ...]} (a copy: later pushes do not change it), plus ``instruction``."""
        if not self.steps:
            raise ConfigError("the observation history is empty: push an observation first.")
        out = {k: torch.stack([s[k] for s in self.steps], dim=1) for k in self.keys}
        if self.instruction is not None:
            out["instruction"] = list(self.instruction)
        return out


def _read(obs: dict, spec: str) -> torch.Tensor:
    """Env key (or its columns, ``"state[0:2]"``) of a batched observation, as a tensor."""
    key, cols = split_key(spec)
    x = obs[key]
    x = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return x if cols is None else x[..., cols]
