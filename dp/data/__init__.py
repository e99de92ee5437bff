"""Demonstration data: zarr ReplayBuffer, training windows, normalization, validation."""
from dp.data.errors import DatasetError
from dp.data.normalizer import Normalizer
from dp.data.replay_buffer import ReplayBuffer
from dp.data.sequence import SequenceDataset, collate_batch, episode_split, window_index
from dp.data.validate import find_problems, validate

__all__ = [
    "DatasetError",
    "Normalizer",
    "ReplayBuffer",
    "SequenceDataset",
    "collate_batch",
    "episode_split",
    "window_index",
    "find_problems",
    "validate",
]
