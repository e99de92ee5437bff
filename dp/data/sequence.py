"""SequenceDataset: fixed-length training windows over a ReplayBuffer.

Window semantics are diffusion_policy's (``SequenceSampler``): a window of ``horizon``
steps may start up to ``pad_before = n_obs_steps - 1`` steps before an episode and end
up to ``pad_after = n_action_steps - 1`` steps after it; out-of-episode steps repeat the
episode's first or last frame. Clipping each time index into ``[episode_start,
episode_end - 1]`` gives exactly that padding, so a window is one fancy-index gather.

Each window has a *current step* ``t = window start + n_obs_steps - 1``, the step of its
last observation. What a sample holds is set per batch name by ``key_offsets``: time
offsets relative to ``t`` (strictly increasing integers). The defaults are the window::

    obs name:  range(-(To-1), 1)          -> steps t-To+1 .. t         (To frames)
    "action":  range(-(To-1), H-(To-1))   -> steps t-To+1 .. t+H-To    (H steps)

``key_offsets={"image": [-1, 0, 4, 8]}`` gives the image at t-1, t, t+4 and t+8 (future
frames for video prediction). Offsets never change which windows exist: ``len(dataset)``
and the sample order depend only on horizon/n_obs_steps/pad_before/pad_after.

A sample (numpy; a DataLoader collates to torch)::

    {"obs": {"state": float32 [To, S], "image": uint8 [To, 3, H, W]},
     "action": float32 [horizon, A],
     "pad_mask": {"state": bool [To], "image": bool [To], "action": bool [horizon]},
     "task_id": int64 []  (multi-task stores only; the episode's id at step t)}

(each time axis is ``len(key_offsets[name])`` long). ``pad_mask[name][k]`` is True when
step ``t + offset[k]`` lies inside the sample's episode, i.e. the value is real data; it
is False when that step fell outside the episode and the value is a repeat of the
episode's first or last frame (edge padding). Use it to keep padded future frames out of
a loss.

``obs_keys`` maps a batch obs name to a store key, or to a list of store keys:

- low-dim arrays are concatenated on the last axis in list order (a 1-D store array
  counts as one feature): ``{"state": ["agent_pos", "object"]}`` -> ``[T, D1 + D2]``;
- images (uint8 ``[N, H, W, C]`` store arrays) are stacked on a camera axis V:
  ``{"image": ["front", "wrist"]}`` -> ``uint8 [T, V, C, H, W]``; cameras must share H, W, C.

A key may take columns of a low-dim store array, ``"state[0:2]"`` (the last axis, Python slice
bounds): diffusion_policy's PushT store has no ``agent_pos``, which is ``state[0:2]`` there.
A plain string key keeps the single-array shapes above. Float frames holding 0..255 (that
store's ``data/img``) are read as uint8 (dp/data/frames.py). With the defaults, observations
are the first ``n_obs_steps`` steps of the window and the actions a policy executes are
``action[To-1 : To-1+n_action_steps]``.
"""
from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from dp.data.errors import DatasetError
from dp.data.frames import as_uint8_frames, is_frames
from dp.data.lazy import LazyFrames
from dp.data.normalizer import Normalizer
from dp.data.replay_buffer import ReplayBuffer
from dp.keys import split_key
from dp.data.validate import validate

# obs name in a batch -> key in the store (diffusion_policy stores images as "img").
DEFAULT_OBS_KEYS = {"state": "state"}
IMAGE_OBS = "image"
ACTION = "action"


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


def _check_obs_keys(obs_keys) -> dict[str, str | list[str]]:
    """obs name -> a store key or a non-empty list of store keys (lists are copied)."""
    if not isinstance(obs_keys, Mapping):
        raise DatasetError(
            f"obs_keys must map batch obs names to store keys, got {type(obs_keys).__name__}; "
            'e.g. {"state": "state", "image": "img"} or {"state": ["agent_pos", "object"]}.'
        )
    out = {}
    for name, key in obs_keys.items():
        if name == ACTION:
            raise DatasetError(
                f"obs_keys has an obs named '{ACTION}', which clashes with the action in a sample "
                "(and in key_offsets / pad_mask); rename that observation."
            )
        if isinstance(key, str):
            out[name] = key
        elif isinstance(key, Sequence) and len(key) > 0 and all(isinstance(k, str) for k in key):
            out[name] = list(key)
        else:
            raise DatasetError(
                f"obs_keys['{name}'] must be a store key or a non-empty list of store keys, got {key!r}; "
                'e.g. "img", or ["agent_pos", "object"] to concatenate low-dim arrays / stack cameras.'
            )
    return out


def _available_bytes() -> int:
    """Memory the OS can give without swapping (MemAvailable), or all of it where that is not known."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _lazy_frames(buffer: ReplayBuffer, keys: list[str], cache_mb) -> tuple[list[str], int]:
    """Which image arrays to read lazily, and the cache's size in bytes. ``cache_mb``: None (every array
    in memory), a number of MB (frames lazily, with that cache), or "auto" (lazily when the frames take
    more than a quarter of the memory available, with a cache of an eighth of it, at most 2 GB)."""
    if cache_mb is None or buffer.backend != "zarr":
        return [], 0
    frames = [k for k in keys if is_frames(tuple(buffer.data[k].shape))]
    if cache_mb == "auto":
        total = sum(int(np.prod(buffer.data[k].shape)) for k in frames)
        available = _available_bytes()
        if total <= available // 4:
            return [], 0
        return frames, min(2 << 30, available // 8)
    if not isinstance(cache_mb, numbers.Number) or isinstance(cache_mb, bool) or cache_mb <= 0:
        raise DatasetError(f"image_cache_mb must be null, 'auto' or a number of MB > 0, got {cache_mb!r}.")
    return frames, int(cache_mb * (1 << 20))


def _frames_as_uint8(buffer: ReplayBuffer, keys: list[str]) -> ReplayBuffer:
    """The in-memory buffer with float frames holding 0..255 read as uint8 (a copy when any is)."""
    floats = [k for k in keys if is_frames(buffer.data[k].shape) and np.dtype(buffer.data[k].dtype).kind == "f"]
    if not floats:
        return buffer
    data = dict(buffer.data)
    for k in floats:
        try:
            data[k] = as_uint8_frames(np.asarray(data[k]), f"data/{k}")
        except ValueError as e:
            raise DatasetError(f"{buffer.source or 'dataset'}: {e}") from None
        print(f"data/{k} holds float frames in 0..255 (as diffusion_policy's PushT store does): read as uint8")
    return ReplayBuffer(data, buffer.episode_ends, buffer.attrs, source=buffer.source)


def _check_offsets(name: str, offsets) -> tuple[int, ...]:
    what = f"key_offsets['{name}']"
    fix = "Give strictly increasing integer steps relative to the current step t, e.g. [-1, 0, 4, 8]."
    if isinstance(offsets, (str, bytes)) or not isinstance(offsets, (Sequence, np.ndarray)):
        raise DatasetError(f"{what} must be a sequence of integers, got {offsets!r}. {fix}")
    values = list(offsets.tolist() if isinstance(offsets, np.ndarray) else offsets)
    if not values:
        raise DatasetError(f"{what} is empty: a sample needs at least one step. {fix}")
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, numbers.Integral)]
    if bad:
        raise DatasetError(f"{what} must hold integers, found {bad!r} in {values!r}. {fix}")
    values = [int(v) for v in values]
    if any(b <= a for a, b in zip(values, values[1:])):
        raise DatasetError(f"{what} must be strictly increasing (no repeats), got {values}. {fix}")
    return tuple(values)


class SequenceDataset(torch.utils.data.Dataset):
    """Training windows over a zarr store or a ReplayBuffer (see the module docstring).

    Args:
        source: path to a store, or a ReplayBuffer. Paths are loaded into memory.
        horizon: H, window length (actions predicted per chunk).
        n_obs_steps: To, observation frames per sample.
        n_action_steps: Ta, actions executed per chunk (sets the default end padding).
        obs_keys: batch obs name -> store key, or list of store keys (low-dim: concatenated
            on the last axis; images: stacked as cameras), e.g. {"state": "state", "image": "img"}.
        action_key: the store key of the actions; None for action-free video (samples then hold
            no "action", but keep ``pad_mask["action"]``).
        key_offsets: batch name ("action" or an obs name) -> strictly increasing time offsets
            relative to the current step t (the last observation's step). A name left out
            (or None) gets the default window: obs ``range(-(To-1), 1)``, action
            ``range(-(To-1), H-(To-1))``.
        val_ratio, seed, max_train_episodes: the episode split (see ``episode_split``).
        split: "train" or "val".
        image_cache_mb: None keeps every array in memory; a number of MB reads a store's image arrays
            lazily (``LazyFrames``) with a cache that size; "auto" does so when the frames would take
            more than a quarter of the memory available (``lazy_keys`` says which were).

    After construction ``key_offsets`` holds the resolved offsets of every name (tuples).
    """

    def __init__(
        self,
        source: str | os.PathLike | ReplayBuffer,
        horizon: int = 16,
        n_obs_steps: int = 2,
        n_action_steps: int = 8,
        obs_keys: Mapping[str, str | Sequence[str]] | None = None,
        action_key: str | None = "action",
        pad_before: int | None = None,
        pad_after: int | None = None,
        val_ratio: float = 0.0,
        seed: int = 42,
        max_train_episodes: int | None = None,
        split: str = "train",
        key_offsets: Mapping[str, Sequence[int]] | None = None,
        image_cache_mb: float | str | None = None,
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
        self.obs_keys = _check_obs_keys(DEFAULT_OBS_KEYS if obs_keys is None else obs_keys)
        self.action_key = action_key
        self.horizon, self.n_obs_steps, self.n_action_steps = horizon, n_obs_steps, n_action_steps
        self.key_offsets = self._resolve_offsets(key_offsets)
        self.pad_before = n_obs_steps - 1 if pad_before is None else pad_before
        self.pad_after = n_action_steps - 1 if pad_after is None else pad_after
        self.val_ratio, self.seed, self.max_train_episodes = val_ratio, seed, max_train_episodes
        self.split = split

        if isinstance(source, ReplayBuffer):
            buffer = source
        else:
            buffer = ReplayBuffer.open(source)
        store_keys = list(dict.fromkeys(split_key(k)[0] for key in self.obs_keys.values() for k in self._as_list(key)))
        needed = [action_key, *store_keys] if action_key else store_keys
        missing = [k for k in needed if k not in buffer]
        if missing:
            raise DatasetError(
                f"Dataset lacks data/{missing} (needed for obs {self.obs_keys} and action '{action_key}'); "
                f"it has data/{buffer.keys()}. Collect with obs=image for images, or change task.obs_keys (or "
                f"task.state_keys, the store keys of a state observation; null reads data/state)."
            )
        extra = ["task_id"] if "task_id" in buffer else []
        lazy, cache_bytes = _lazy_frames(buffer, needed, image_cache_mb)
        self.lazy_keys = lazy
        if buffer.backend == "zarr":
            # chunk data is read once: to_memory raises DatasetError naming a chunk that fails
            # its checksum or does not decode; the NaN scan then runs on the copy in memory.
            # Frames read lazily are checked for presence here and decoded when first sampled.
            validate(buffer, required_keys=tuple(needed), quick=True)
            store, eager = buffer, [k for k in needed + extra if k not in lazy]
            buffer = buffer.to_memory(eager)
            validate(buffer, required_keys=tuple(k for k in needed if k not in lazy))
            buffer = _frames_as_uint8(buffer, eager)
            if lazy:
                frames = {k: LazyFrames(store.data[k], cache_bytes, f"data/{k}") for k in lazy}
                buffer = ReplayBuffer({**buffer.data, **frames}, buffer.episode_ends, buffer.attrs, source=store.source)
        else:
            validate(buffer, required_keys=tuple(needed))
            buffer = _frames_as_uint8(buffer, needed)
        self.buffer = buffer
        self.extra_keys = extra
        self.attrs = dict(self.buffer.attrs)

        train, val = episode_split(self.buffer.n_episodes, val_ratio, seed, max_train_episodes)
        self.episode_mask = train if split == "train" else val
        self.start, self.ep_start, self.ep_end = window_index(
            self.buffer.episode_ends, self.episode_mask, horizon, self.pad_before, self.pad_after
        )
        self._image_keys = self._check_store_shapes()
        # names that share offsets share one time index: (offsets, int64 array, contiguous, names)
        groups: dict[tuple[int, ...], list[str]] = {}
        for name, offs in self.key_offsets.items():
            groups.setdefault(offs, []).append(name)
        self._offset_groups = [
            (offs, np.asarray(offs, dtype=np.int64), offs[-1] - offs[0] + 1 == len(offs), names,
             np.ones(len(offs), dtype=bool))  # copied as the mask of an unpadded sample
            for offs, names in groups.items()
        ]

    # -------------------------------------------------------------- setup
    @staticmethod
    def _as_list(key: str | list[str]) -> list[str]:
        return [key] if isinstance(key, str) else key

    def _resolve_offsets(self, key_offsets) -> dict[str, tuple[int, ...]]:
        To, H = self.n_obs_steps, self.horizon
        out = {name: tuple(range(-(To - 1), 1)) for name in self.obs_keys}
        out[ACTION] = tuple(range(-(To - 1), H - (To - 1)))
        if key_offsets is None:
            return out
        if not isinstance(key_offsets, Mapping):
            raise DatasetError(
                f"key_offsets must map batch names to time offsets, got {type(key_offsets).__name__}; "
                'e.g. {"image": [-1, 0, 4, 8]}.'
            )
        unknown = [name for name in key_offsets if name not in out]
        if unknown:
            raise DatasetError(
                f"key_offsets names {unknown}, which are not in this dataset's batch; expected "
                f"'{ACTION}' or an obs name from obs_keys {sorted(self.obs_keys)}. Add the obs to obs_keys "
                "or fix the name."
            )
        for name, offsets in key_offsets.items():
            out[name] = _check_offsets(name, offsets)
        return out

    def _per_step_shape(self, spec: str) -> tuple[int, ...]:
        """One step's shape of a store key, or of the columns it names (``"state[0:2]"`` -> (2,))."""
        key, cols = split_key(spec)
        shape = tuple(self.buffer.data[key].shape[1:])
        if cols is None:
            return shape
        n = len(range(*cols.indices(shape[-1]))) if shape else 0
        if n == 0:
            raise DatasetError(f"obs key {spec!r} selects no column of data/{key} (per-step shape {shape}); give "
                               f"a slice of its last axis, e.g. '{key}[0:2]'.")
        return (*shape[:-1], n)

    def _read(self, spec: str, t):
        """Store key (or its columns) ``spec`` at time index ``t``."""
        key, cols = split_key(spec)
        x = self.buffer.data[key][t]
        return x if cols is None else x[..., cols]

    def _check_store_shapes(self) -> set[str]:
        """Names whose store arrays are images; checks that a list of keys can be combined."""
        data = self.buffer.data
        images = set()
        for name, key in self.obs_keys.items():
            keys = self._as_list(key)
            is_image = [data[split_key(k)[0]].ndim == 4 for k in keys]
            shapes = {k: self._per_step_shape(k) for k in keys}
            if all(is_image):
                images.add(name)
                if any(split_key(k)[1] is not None for k in keys):
                    raise DatasetError(f"obs_keys['{name}'] = {key!r} takes columns of an image array; columns "
                                       f"('key[a:b]') apply to low-dim arrays only.")
                dtypes = {k: str(data[k].dtype) for k in keys}
                if len(set(shapes.values())) > 1 or len(set(dtypes.values())) > 1:
                    raise DatasetError(
                        f"obs_keys['{name}'] stacks cameras {keys} with different frames: per-step shapes "
                        f"(H, W, C) {shapes}, dtypes {dtypes}. Cameras stacked as one obs must share H, W, C "
                        "and dtype; resize them when collecting or give each camera its own obs name."
                    )
            elif any(is_image):
                raise DatasetError(
                    f"obs_keys['{name}'] mixes images and low-dim arrays: {keys} have per-step shapes {shapes}. "
                    "A list of keys must be all cameras ([H, W, C]) or all low-dim; split them into two obs names."
                )
            elif not isinstance(key, str):
                lead = {k: s[:-1] for k, s in shapes.items()}  # 1-D arrays count as [1]: lead ()
                if len(set(lead.values())) > 1:
                    raise DatasetError(
                        f"obs_keys['{name}'] concatenates {keys} on the last axis, but their per-step shapes "
                        f"{shapes} differ before it. Concatenate only arrays of shape [D] (or matching leading "
                        "axes), or give them separate obs names."
                    )
        return images

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

    def sample_shapes(self) -> dict:
        """Per-step shapes of a sample: ``{"obs": {name: shape}, "action": shape}`` and the
        time length of each name, ``{"steps": {name: T_name}}``. Images are channels first
        (``[C, H, W]``, or ``[V, C, H, W]`` for a list of cameras)."""
        data = self.buffer.data
        obs = {}
        for name, key in self.obs_keys.items():
            keys = self._as_list(key)
            if name in self._image_keys:
                h, w, c = data[split_key(keys[0])[0]].shape[1:]
                obs[name] = [c, h, w] if isinstance(key, str) else [len(keys), c, h, w]
            elif isinstance(key, str):
                obs[name] = list(self._per_step_shape(key))
            else:
                shapes = [self._per_step_shape(k) or (1,) for k in keys]
                obs[name] = [*shapes[0][:-1], sum(s[-1] for s in shapes)]
        shapes = {"obs": obs, "steps": {name: len(offs) for name, offs in self.key_offsets.items()}}
        if self.action_key:
            shapes["action"] = list(data[self.action_key].shape[1:])
        return shapes

    # -------------------------------------------------------------- gathering
    def _gather_obs(self, name: str, t):
        """Obs ``name`` at time index ``t`` (int array of any shape, or a slice): one fancy-index
        gather per store key, then concatenate (low-dim) or stack as cameras (images)."""
        data = self.buffer.data
        key = self.obs_keys[name]
        if isinstance(key, str):
            x = self._read(key, t)
            return np.moveaxis(x, -1, -3) if name in self._image_keys else x
        if name in self._image_keys:
            out = None
            for v, k in enumerate(key):
                x = np.moveaxis(data[k][t], -1, -3)  # [..., H, W, C] -> [..., C, H, W]
                if out is None:
                    out = np.empty((*x.shape[:-3], len(key), *x.shape[-3:]), dtype=x.dtype)
                out[..., v, :, :, :] = x
            return out
        parts = []
        for k in key:
            x = self._read(k, t)
            parts.append(x[..., None] if data[split_key(k)[0]].ndim == 1 else x)
        return np.concatenate(parts, axis=-1)

    def inside_episode(self, name: str) -> np.ndarray:
        """[len(self)] bool: True for the windows whose every ``name`` offset lies inside the
        episode (no edge padding anywhere in that key's frames)."""
        offs = self.key_offsets[name]
        t_now = self.start + (self.n_obs_steps - 1)
        return (t_now + offs[0] >= self.ep_start) & (t_now + offs[-1] <= self.ep_end - 1)

    def get_batch(self, idx) -> dict:
        """Windows ``idx`` (int array [B]) gathered at once: the same dict as items, batched."""
        idx = np.asarray(idx, dtype=np.int64)
        data = self.buffer.data
        t_now = self.start[idx] + (self.n_obs_steps - 1)
        lo, hi = self.ep_start[idx], self.ep_end[idx] - 1
        index, pad_mask = {}, {}
        for _, offs, _, names, _ in self._offset_groups:
            raw = t_now[:, None] + offs  # [B, T]: current step + offsets
            t = np.clip(raw, lo[:, None], hi[:, None])  # out-of-episode steps repeat the edge frame
            mask = t == raw
            for k, name in enumerate(names):
                index[name] = t
                pad_mask[name] = mask if k == 0 else mask.copy()  # no aliasing between names
        out = {"obs": {name: self._gather_obs(name, index[name]) for name in self.obs_keys}, "pad_mask": pad_mask}
        if self.action_key:
            out["action"] = data[self.action_key][index[ACTION]].astype(np.float32)
        if self.extra_keys:
            t_id = np.clip(t_now, lo, hi)
            for key in self.extra_keys:
                out[key] = data[key][t_id].astype(np.int64)
        return out

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} out of range [0, {len(self)}).")
        t_now = int(self.start[i]) + self.n_obs_steps - 1
        lo, hi = int(self.ep_start[i]), int(self.ep_end[i]) - 1
        index, pad_mask = {}, {}
        for offs, arr, contiguous, names, ones in self._offset_groups:
            first, last = t_now + offs[0], t_now + offs[-1]
            if lo <= first and last <= hi:  # no padding
                t = slice(first, last + 1) if contiguous else t_now + arr  # a slice gives views
                mask = ones
            else:
                raw = t_now + arr
                t = np.clip(raw, lo, hi)
                mask = t == raw
            for name in names:
                index[name] = t
                pad_mask[name] = mask.copy()  # each name its own array (ones is shared state)
        data = self.buffer.data
        out = {"obs": {name: self._gather_obs(name, index[name]) for name in self.obs_keys}, "pad_mask": pad_mask}
        if self.action_key:
            out["action"] = np.asarray(data[self.action_key][index[ACTION]], dtype=np.float32)
        for key in self.extra_keys:
            out[key] = np.int64(data[key][min(max(t_now, lo), hi)])
        return out

    def __getitems__(self, indices: list[int]) -> dict:
        """Batched fetch used by torch's DataLoader (pair it with ``collate_batch``)."""
        return self.get_batch(np.asarray(indices))

    def fit_normalizer(self, mode: str = "limits") -> Normalizer:
        """Normalizer fitted on this split's episodes for the action and low-dim obs names
        (a list of low-dim store keys is fitted on its concatenation, as batches hold it)."""
        steps = np.concatenate(
            [np.arange(s, e) for s, e, m in zip(self._episode_starts(), self.buffer.episode_ends, self.episode_mask) if m]
        )
        arrays = {"action": self.buffer.data[self.action_key][steps]} if self.action_key else {}
        for name in self.obs_keys:
            if name not in self._image_keys:
                arrays[name] = self._gather_obs(name, steps)
        return Normalizer.fit(arrays, mode=mode)

    def _episode_starts(self) -> np.ndarray:
        ends = self.buffer.episode_ends
        return np.concatenate([[0], ends[:-1]])


def collate_batch(batch):
    """DataLoader collate_fn: numpy tree -> torch tree.

    Takes ``__getitems__``/``get_batch`` output (already batched), or a list of items from
    ``__getitem__`` (stacked on a new batch axis). ``pad_mask`` arrays become torch.bool [B, T]."""
    if isinstance(batch, (list, tuple)):
        return collate_batch(_stack_items(batch))
    if isinstance(batch, dict):
        return {k: collate_batch(v) for k, v in batch.items()}
    return torch.from_numpy(np.ascontiguousarray(batch))


def _stack_items(items):
    if isinstance(items[0], dict):
        return {k: _stack_items([item[k] for item in items]) for k in items[0]}
    return np.stack([np.asarray(x) for x in items])
