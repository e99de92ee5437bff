"""The Policy interface every method implements (DESIGN.md, "Interfaces").

    loss = policy.compute_loss(batch)["loss"]        # batch from SequenceDataset, torch tensors
    actions = policy.predict_action(obs)              # [B, H, A] env units, inference mode
    action = policy.select_action(obs)                # [B, A]: pops a queue of n_action_steps
    policy.reset()                                    # between episodes
    policy = Policy.from_checkpoint("runs/x/checkpoints/latest")

A policy is rebuilt from its config alone: ``policy.config`` holds the constructor
arguments (``_target_`` included) and is written to the checkpoint's config.yaml.
The Normalizer is a submodule, so normalization travels in the weights.
"""
from __future__ import annotations

import collections
import os
from pathlib import Path

import torch
from torch import nn

from dp.data.normalizer import Normalizer


class Policy(nn.Module):
    n_obs_steps: int
    n_action_steps: int
    horizon: int

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        self.normalizer = Normalizer()
        self._queue: collections.deque = collections.deque()

    # -------------------------------------------------------------- required
    def compute_loss(self, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def predict_action(self, obs: dict) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """``compute_loss``; a forward() so DistributedDataParallel and torch.compile can wrap it."""
        return self.compute_loss(batch)

    # -------------------------------------------------------------- shared
    def reset(self) -> None:
        """Clear per-episode state (the action queue; streaming buffers in subclasses)."""
        self._queue.clear()

    def set_normalizer(self, normalizer: Normalizer) -> None:
        missing = [k for k in self.normalized_keys() if k not in normalizer]
        if missing:
            raise KeyError(f"Normalizer lacks keys {missing}; it has {normalizer.keys()}.")
        self.normalizer = normalizer.to(self.device)

    def normalized_keys(self) -> list[str]:
        """Keys the normalizer must know: the action and every low-dim obs key."""
        return ["action"]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def executed_actions(self, chunk: torch.Tensor) -> torch.Tensor:
        """The part of a predicted chunk that is executed: [B, H, A] -> [B, Ta, A].

        Windows start n_obs_steps-1 steps before the current step (diffusion_policy)."""
        start = self.n_obs_steps - 1
        return chunk[:, start : start + self.n_action_steps]

    @torch.inference_mode()
    def select_action(self, obs: dict) -> torch.Tensor:
        """One action [B, A]; predicts a new chunk when the queue of executed actions is empty."""
        if not self._queue:
            self._queue.extend(self.executed_actions(self.predict_action(obs)).unbind(1))
        return self._queue.popleft()

    def obs_to_device(self, obs: dict) -> dict:
        """Observations as tensors on the policy's device (numpy accepted)."""
        out = {}
        for k, v in obs.items():
            if isinstance(v, torch.Tensor):
                out[k] = v.to(self.device)
            elif k == "instruction":
                out[k] = v
            else:
                out[k] = torch.as_tensor(v, device=self.device)
        return out

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # -------------------------------------------------------------- checkpoints
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, ema: bool = True, device: str | torch.device = "cpu") -> "Policy":
        """Rebuild a policy from a checkpoint directory (see dp.checkpoint and dp.policies.registry)."""
        from dp.policies.registry import load_policy

        return load_policy(Path(path), ema=ema, device=device)


def inpaint(x0: torch.Tensor, known) -> torch.Tensor:
    """x0 [B, H, A] with ``known`` = (positions, values [B, k, A]) written in (None: x0 as is)."""
    if known is None:
        return x0
    x0 = x0.clone()
    x0[:, known[0]] = known[1]
    return x0


def select_rows(obs: dict, rows) -> dict:
    """The observation dict of batch rows ``rows`` (a slice or index tensor); instructions too."""
    out = {k: v[rows] for k, v in obs.items() if k != "instruction"}
    if "instruction" in obs:
        texts = list(obs["instruction"])
        out["instruction"] = texts[rows] if isinstance(rows, slice) else [texts[i] for i in rows.tolist()]
    return out
