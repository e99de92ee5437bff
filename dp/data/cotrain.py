"""Co-training on robot demonstrations and action-free video (PAD: 70% robot, 30% video).

    task.video_datasets: [{path: data/mw_door_open_img.zarr}, ...]   # actions absent or ignored
    task.video_fraction: 0.3

``CoTrainDataset`` puts the robot windows and the video windows (every video store's,
concatenated) behind one virtual index whose share of video slots is ``video_fraction``. The
trainer's per-epoch permutation of that index then gives batches with that share of video
samples on average, and every robot and every video window appears at least once per epoch
(the side with fewer windows repeats). A sample carries ``has_action``: False for video,
whose ``action`` is zeros and ``pad_mask["action"]`` all False, so a policy masks them out
of its action loss. Instructions are the robot store's followed by each video store's,
and a video sample's ``task_id`` points into that list. Normalization, validation and
evaluation are the robot data's.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from dp.data.errors import DatasetError
from dp.data.sequence import SequenceDataset


class CoTrainDataset:
    def __init__(self, robot: SequenceDataset, video_specs: Sequence[Mapping], video_fraction: float = 0.3,
                 key_offsets: Mapping | None = None):
        if not isinstance(video_fraction, (int, float)) or not 0 < video_fraction < 1:
            raise DatasetError(f"task.video_fraction must be in (0, 1) (PAD: 0.3), got {video_fraction!r}.")
        if not video_specs:
            raise DatasetError("task.video_datasets is empty: list the action-free stores as [{path: ...}].")
        self.robot, self.video_fraction = robot, float(video_fraction)
        self.obs_keys = robot.obs_keys
        robot_shapes = robot.sample_shapes()["obs"]
        self.videos: list[SequenceDataset] = []
        instructions = list(robot.attrs.get("instructions") or [])
        self.task_offsets: list[int] = []
        for i, spec in enumerate(video_specs):
            path = spec.get("path") if isinstance(spec, Mapping) else None
            if not path:
                raise DatasetError(f"task.video_datasets[{i}] must be {{path: STORE}}, got {spec!r}.")
            video = SequenceDataset(path, horizon=robot.horizon, n_obs_steps=robot.n_obs_steps,
                                    n_action_steps=robot.n_action_steps, obs_keys=robot.obs_keys, action_key=None,
                                    key_offsets=key_offsets)
            shapes = video.sample_shapes()["obs"]
            different = {k: (robot_shapes[k], shapes.get(k)) for k in robot_shapes if shapes.get(k) != robot_shapes[k]}
            if different:
                detail = "; ".join(f"{k}: robot {r}, video {v}" for k, (r, v) in different.items())
                raise DatasetError(f"video store {path} does not match the robot store {robot.buffer.attrs.get('task')}: "
                                   f"{detail}. Collect both at the same image_size (dp-collect ... image_size=N) with "
                                   "the same observation keys.")
            self.task_offsets.append(len(instructions))
            instructions += list(video.attrs.get("instructions") or [f"video {i}"])
            self.videos.append(video)
        self.attrs = {**robot.attrs, "instructions": instructions,
                      "video_sources": [str(s["path"]) for s in video_specs]}
        self.video_starts = np.cumsum([0] + [len(v) for v in self.videos])
        n_robot, n_video = len(robot), int(self.video_starts[-1])
        if n_video == 0:
            raise DatasetError("the video stores hold no windows (empty stores?).")
        total = max(math.ceil(n_robot / (1 - video_fraction)), math.ceil(n_video / video_fraction))
        self.video_slots = round(total * video_fraction)
        self.robot_slots = total - self.video_slots

    def __len__(self) -> int:
        return self.robot_slots + self.video_slots

    def sample_shapes(self) -> dict:
        return self.robot.sample_shapes()

    def fit_normalizer(self, mode: str = "limits"):
        return self.robot.fit_normalizer(mode)

    def get_validation_dataset(self) -> SequenceDataset:
        return self.robot.get_validation_dataset()

    def get_batch(self, idx) -> dict:
        """Virtual indices -> one batch: robot windows, then video windows, each row in its place."""
        idx = np.asarray(idx, dtype=np.int64)
        is_video = idx >= self.robot_slots
        parts = [(np.flatnonzero(~is_video), self._robot_batch(idx[~is_video] % len(self.robot)))]
        slots = (idx[is_video] - self.robot_slots) % int(self.video_starts[-1])
        store = np.searchsorted(self.video_starts, slots, side="right") - 1
        rows = np.flatnonzero(is_video)
        for s in np.unique(store):
            pick = store == s
            parts.append((rows[pick], self._video_batch(int(s), slots[pick] - self.video_starts[s])))
        return _assemble(parts, len(idx))

    def _robot_batch(self, windows) -> dict:
        batch = self.robot.get_batch(windows)
        batch["has_action"] = np.ones(len(windows), dtype=bool)
        if "task_id" not in batch:
            batch["task_id"] = np.zeros(len(windows), dtype=np.int64)
        return batch

    def _video_batch(self, store: int, windows) -> dict:
        batch = self.videos[store].get_batch(windows)
        steps, dim = len(self.robot.key_offsets["action"]), self.robot.sample_shapes()["action"]
        batch["action"] = np.zeros((len(windows), steps, *dim), dtype=np.float32)
        batch["pad_mask"]["action"] = np.zeros((len(windows), steps), dtype=bool)
        batch["has_action"] = np.zeros(len(windows), dtype=bool)
        batch["task_id"] = batch.get("task_id", np.zeros(len(windows), dtype=np.int64)) + self.task_offsets[store]
        return batch


def _assemble(parts, n: int) -> dict:
    """[(rows, batch)] -> one batch of n rows, each part's rows written at its positions."""
    parts = [(rows, b) for rows, b in parts if len(rows)]

    def merge(values):
        first = values[0][1]
        if isinstance(first, dict):
            return {k: merge([(r, v[k]) for r, v in values]) for k in first}
        out = np.empty((n, *first.shape[1:]), dtype=first.dtype)
        for rows, v in values:
            out[rows] = v
        return out

    return merge(parts)
