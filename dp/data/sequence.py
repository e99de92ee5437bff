"""SequenceDataset: fixed-length training windows over a ReplayBuffer.

Window semantics are diffusion_policy's (``SequenceSampler``): a window of ``horizon``
steps may start up to ``pad_before = n_obs_steps - 1`` steps before an episode and end
up to ``pad_after = n_action_steps - 1`` steps after it; out-of-episode steps repeat the
episode's first or last frame. Clipping each time index into ``[episode_start,
episode_end - 1]`` gives exactly that padding, so a window is one fancy-index gather.

A sample (numpy; a DataLoader collates to torch)::

    {"obs": {"state": float32 [To, S], "image": uint8 [To, 3, H, W]},
     "action": float32 [horizon, A],
     "task_id": int64 []  (multi-task stores only)}

Observations are the first ``n_obs_steps`` steps of the window; the actions a policy
executes are ``action[To-1 : To-1+n_action_steps]``.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch

from dp.data.errors import DatasetError
from dp.data.normalizer import Normalizer
from dp.data.replay_buffer import ReplayBuffer
from dp.data.validate import validate

# obs name in a batch -> key in the store (diffusion_policy stores images as "img").
DEFAULT_OBS_KEYS = {"state": "state"}
IMAGE_OBS = "image"


def episode_split(n_episodes: int, val_ratio: float, seed: int, max_train_episodes: int | None = None):
    """Boolean masks (train, val) over episodes; a seeded random choice of val episodes.

    With ``val_ratio > 0`` at least one episode goes to val and at least one stays in train.
    ``max_train_episodes`` then keeps a seeded random subset of the train episodes.
    """
    if not 0.0 <= val_ratio < 1.0:
        raise DatasetError(f"val_ratio must be in [0, 1), got {val_ratio}.")
    rng = np.random.default_rng(seed)
    val = np.zeros(n_episodes, dtype=bool)
    if val_ratio > 0 and n_episodes > 1:
        n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
        val[rng.choice(n_episodes, size=n_val, replace=False)] = True
    train = ~val
    if max_train_episodes is not None and train.sum() > max_train_episodes:
        if max_train_episodes < 1:
            raise DatasetError(f"max_train_episodes must be >= 1, got {max_train_episodes}.")
        keep = rng.choice(np.flatnonzero(train), size=max_train_episodes, replace=False)
        train = np.zeros(n_episodes, dtype=bool)
        train[keep] = True
    return train, val


def window_index(episode_ends: np.ndarray, episode_mask: np.ndarray, horizon: int, pad_before: int, pad_after: int):
    """All windows of the selected episodes, built without a per-sample Python loop.

    Returns int64 arrays ``(start, ep_start, ep_end)``, one entry per window: ``start`` is the
    absolute index of the window's first step (may lie before ``ep_start`` when padded).
    Order matches diffusion_policy's ``create_indices``: by episode, then by start.
    """
    ends = np.asarray(episode_ends, dtype=np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    lengths = ends - starts
    first = -pad_before  # relative start of the first window
    last = lengths - horizon + pad_after  # relative start of the last window
    counts = np.where(episode_mask, np.maximum(last - first + 1, 0), 0)
    total = int(counts.sum())
    ep = np.repeat(np.arange(len(ends)), counts)
    # position of each window within its episode's run: 0, 1, ..., counts[e]-1
    offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    return starts[ep] + first + offsets, starts[ep], ends[ep]


class SequenceDataset(torch.utils.data.Dataset):
    """Training windows over a zarr store or a ReplayBuffer (see the module docstring).

    Args:
        source: path to a store, or a ReplayBuffer. Paths are loaded into memory.
        horizon: H, window length (actions predicted per chunk).
        n_obs_steps: To, observation frames per sample.
        n_action_steps: Ta, actions executed per chunk (sets the default end padding).
        obs_keys: batch obs name -> store key, e.g. {"state": "state", "image": "img"}.
        val_ratio, seed, max_train_episodes: the episode split (see ``episode_split``).
        split: "train" or "val".
    """

    def __init__(
        self,
        source: str | os.PathLike | ReplayBuffer,
        horizon: int = 16,
        n_obs_steps: int = 2,
        n_action_steps: int = 8,
        obs_keys: Mapping[str, str] | None = None,
        action_key: str = "action",
        pad_before: int | None = None,
        pad_after: int | None = None,
        val_ratio: float = 0.0,
        seed: int = 42,
        max_train_episodes: int | None = None,
        split: str = "train",
    ):
        if split not in ("train", "val"):
            raise DatasetError(f"split must be 'train' or 'val', got {split!r}.")
        if not 1 <= n_obs_steps <= horizon:
            raise DatasetError(f"n_obs_steps must be in [1, horizon={horizon}], got {n_obs_steps}.")
        if not 1 <= n_action_steps <= horizon - n_obs_steps + 1:
            raise DatasetError(
                f"n_action_steps must be in [1, horizon - n_obs_steps + 1 = {horizon - n_obs_steps + 1}], "
                f"got {n_action_steps}: executed actions are action[To-1 : To-1+Ta]."
            )
        self.obs_keys = dict(DEFAULT_OBS_KEYS if obs_keys is None else obs_keys)
        self.action_key = action_key
        self.horizon, self.n_obs_steps, self.n_action_steps = horizon, n_obs_steps, n_action_steps
        self.pad_before = n_obs_steps - 1 if pad_before is None else pad_before
        self.pad_after = n_action_steps - 1 if pad_after is None else pad_after
        self.val_ratio, self.seed, self.max_train_episodes = val_ratio, seed, max_train_episodes
        self.split = split

        if isinstance(source, ReplayBuffer):
            buffer = source
        else:
            buffer = ReplayBuffer.open(source)
        needed = [action_key, *self.obs_keys.values()]
        missing = [k for k in needed if k not in buffer]
        if missing:
            raise DatasetError(
                f"Dataset lacks data/{missing} (needed for obs {self.obs_keys} and action '{action_key}'); "
                f"it has data/{buffer.keys()}. Collect with obs=image for images, or change task.obs_keys."
            )
        extra = ["task_id"] if "task_id" in buffer else []
        if buffer.backend == "zarr":
            # chunk data is read once: to_memory raises DatasetError naming a chunk that fails
            # its checksum or does not decode; the NaN scan then runs on the copy in memory.
            validate(buffer, required_keys=tuple(needed), quick=True)
            buffer = buffer.to_memory(needed + extra)
        validate(buffer, required_keys=tuple(needed))
        self.buffer = buffer
        self.extra_keys = extra
        self.attrs = dict(self.buffer.attrs)

        train, val = episode_split(self.buffer.n_episodes, val_ratio, seed, max_train_episodes)
        self.episode_mask = train if split == "train" else val
        self.start, self.ep_start, self.ep_end = window_index(
            self.buffer.episode_ends, self.episode_mask, horizon, self.pad_before, self.pad_after
        )
        self._image_keys = {name for name, key in self.obs_keys.items() if self.buffer.data[key].ndim == 4}

    def get_validation_dataset(self) -> "SequenceDataset":
        """The held-out episodes, with the same windows and split seed."""
        val = object.__new__(SequenceDataset)
        val.__dict__.update(self.__dict__)
        val.split = "val"
        _, val.episode_mask = episode_split(self.buffer.n_episodes, self.val_ratio, self.seed, self.max_train_episodes)
        val.start, val.ep_start, val.ep_end = window_index(
            self.buffer.episode_ends, val.episode_mask, self.horizon, self.pad_before, self.pad_after
        )
        return val

    def __len__(self) -> int:
        return len(self.start)

    def _time_index(self, idx: np.ndarray, length: int) -> np.ndarray:
        """[B, length] absolute step indices, clipped into each window's episode (= edge padding)."""
        t = self.start[idx, None] + np.arange(length)
        return np.clip(t, self.ep_start[idx, None], self.ep_end[idx, None] - 1)

    def get_batch(self, idx) -> dict:
        """Windows ``idx`` (int array [B]) gathered at once: the same dict as items, batched."""
        idx = np.asarray(idx, dtype=np.int64)
        data = self.buffer.data
        t_obs = self._time_index(idx, self.n_obs_steps)
        obs = {}
        for name, key in self.obs_keys.items():
            x = data[key][t_obs]
            if name in self._image_keys:
                x = np.moveaxis(x, -1, -3)  # [B, To, H, W, C] -> [B, To, C, H, W]
            obs[name] = x
        out = {"obs": obs, "action": data[self.action_key][self._time_index(idx, self.horizon)].astype(np.float32)}
        for key in self.extra_keys:
            out[key] = data[key][t_obs[:, -1]].astype(np.int64)
        return out

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} out of range [0, {len(self)}).")
        s, lo, hi = int(self.start[i]), int(self.ep_start[i]), int(self.ep_end[i]) - 1
        if lo <= s and s + self.horizon - 1 <= hi:  # no padding: plain slices (views)
            t_obs, t_act = slice(s, s + self.n_obs_steps), slice(s, s + self.horizon)
        else:
            t_act = np.clip(np.arange(s, s + self.horizon), lo, hi)
            t_obs = t_act[: self.n_obs_steps]
        data = self.buffer.data
        obs = {}
        for name, key in self.obs_keys.items():
            x = data[key][t_obs]
            obs[name] = np.moveaxis(x, -1, -3) if name in self._image_keys else x
        out = {"obs": obs, "action": np.asarray(data[self.action_key][t_act], dtype=np.float32)}
        for key in self.extra_keys:
            out[key] = np.int64(data[key][min(max(s + self.n_obs_steps - 1, lo), hi)])
        return out

    def __getitems__(self, indices: list[int]) -> dict:
        """Batched fetch used by torch's DataLoader (pair it with ``collate_batch``)."""
        return self.get_batch(np.asarray(indices))

    def fit_normalizer(self, mode: str = "limits") -> Normalizer:
        """Normalizer fitted on this split's episodes for the action and low-dim obs keys."""
        steps = np.concatenate(
            [np.arange(s, e) for s, e, m in zip(self._episode_starts(), self.buffer.episode_ends, self.episode_mask) if m]
        )
        arrays = {"action": self.buffer.data[self.action_key][steps]}
        for name, key in self.obs_keys.items():
            if name not in self._image_keys:
                arrays[name] = self.buffer.data[key][steps]
        return Normalizer.fit(arrays, mode=mode)

    def _episode_starts(self) -> np.ndarray:
        ends = self.buffer.episode_ends
        return np.concatenate([[0], ends[:-1]])


def collate_batch(batch):
    """DataLoader collate_fn for ``__getitems__`` output: numpy tree -> torch tree."""
    if isinstance(batch, dict):
        return {k: collate_batch(v) for k, v in batch.items()}
    return torch.from_numpy(np.ascontiguousarray(batch))
