"""Checks that a ReplayBuffer is well formed; every problem names its key.

Metadata (dtypes, shapes, episode_ends) and chunk presence are always checked; unless
``quick``, every chunk of every array is also read, which finds chunks that fail their
checksum or do not decode, and NaN/inf in float arrays.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import zarr

from dp.data.errors import DatasetError
from dp.data.integrity import (
    describe_missing,
    describe_unreadable,
    every_chunk_expected,
    missing_chunks,
    read_failures,
    step_blocks,
)
from dp.data.frames import float_frames_problem, is_frames
from dp.data.replay_buffer import ReplayBuffer

# Expected dtype kinds for the keys dp writes ("f" float, "u" unsigned, "i" signed int).
EXPECTED_KINDS = {
    "action": "f",
    "state": "f",
    "img": "uf",  # uint8, or float holding 0..255 (diffusion_policy's PushT store; dp/data/frames.py)
    "image": "uf",
    "task_id": "iu",
}
IMAGE_KEYS = ("img", "image")


@dataclass
class Problem:
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def find_problems(
    buffer: ReplayBuffer, required_keys: tuple[str, ...] = ("action",), quick: bool = False
) -> list[Problem]:
    """Every problem found; an empty list means the buffer is valid.

    ``quick`` skips reading chunk data (checksums, decoding, NaN scan): only metadata and
    chunk presence are checked.
    """
    problems: list[Problem] = []
    ends_arr = buffer._episode_ends
    if not np.issubdtype(np.dtype(ends_arr.dtype), np.integer):
        problems.append(Problem("meta/episode_ends", f"dtype {ends_arr.dtype}, expected an integer type (int64)."))
        return problems
    if len(ends_arr.shape) != 1:
        problems.append(Problem("meta/episode_ends", f"shape {tuple(ends_arr.shape)}, expected 1-D [E]."))
        return problems
    problems += _chunk_problems("meta/episode_ends", ends_arr, quick=False)  # small: always read
    if problems:
        return problems
    ends = buffer.episode_ends
    if len(ends) == 0:
        problems.append(Problem("meta/episode_ends", "no episodes (empty); collect or import some first."))
    lengths = np.diff(ends, prepend=0)
    if len(ends) and (lengths <= 0).any():
        bad = np.flatnonzero(lengths <= 0)
        kind = "empty episodes" if (lengths[bad] == 0).all() else "not increasing"
        problems.append(
            Problem(
                "meta/episode_ends",
                f"{kind} at episode(s) {bad[:10].tolist()} (ends {ends[bad[:5]].tolist()}); "
                "episode_ends must be strictly increasing cumulative end indices.",
            )
        )
    for key in required_keys:
        if key not in buffer.data:
            problems.append(Problem(f"data/{key}", f"missing; the dataset has data/{buffer.keys()}."))
    total = int(ends[-1]) if len(ends) else 0
    for key in buffer.keys():
        arr = buffer.data[key]
        name = f"data/{key}"
        if arr.shape[0] != total:
            problems.append(
                Problem(name, f"length {arr.shape[0]} on axis 0, but meta/episode_ends[-1] = {total}; they must be equal.")
            )
        kinds = EXPECTED_KINDS.get(key)
        if kinds and np.dtype(arr.dtype).kind not in kinds:
            want = {"f": "a float type", "uf": "uint8 (or float holding 0..255)", "iu": "an integer type"}[kinds]
            problems.append(Problem(name, f"dtype {arr.dtype}, expected {want}."))
        if key in IMAGE_KEYS:
            problems += _image_shape_problems(name, arr)
        problems += _chunk_problems(name, arr, quick, frames=key in IMAGE_KEYS and is_frames(arr.shape))
    return problems


def _image_shape_problems(name: str, arr) -> list[Problem]:
    """Images must be [T, H, W, C], channels last; a 3-D one would pass as a low-dim obs."""
    shape = tuple(arr.shape)
    if is_frames(shape):
        return []
    expected = "expected images [T, H, W, C] uint8, channels last, C in 1/3/4 (dp's policies read C=3, RGB)"
    if len(shape) == 3:
        fix = "add the axis and re-save: arr[..., None] (grayscale) or np.repeat(arr[..., None], 3, axis=-1) (RGB)"
        return [Problem(name, f"shape {shape} has no channel axis; {expected}. To fix, {fix}.")]
    fix = "if it is channels-first [T, C, H, W], re-save it with np.moveaxis(arr, 1, -1)"
    return [Problem(name, f"shape {shape}; {expected}. To fix, {fix}.")]


def _chunk_problems(name: str, arr, quick: bool, frames: bool = False) -> list[Problem]:
    """Missing chunks, and unless ``quick`` unreadable chunks, the first NaN/inf step and (float
    ``frames``) values that do not read as 0..255."""
    problems = []
    if isinstance(arr, zarr.Array) and every_chunk_expected(arr):
        missing = missing_chunks(arr)
        if missing:
            problems.append(Problem(name, describe_missing(arr, missing)))
    if quick or not arr.ndim:
        return problems
    unreadable, nonfinite = [], None
    is_float = np.dtype(arr.dtype).kind == "f"
    lo, hi = np.inf, -np.inf
    for s, e in step_blocks(arr):
        try:
            block = np.asarray(arr[s:e])
        except MemoryError:
            raise
        except Exception as err:  # a checksum or decode failure: find which chunks
            unreadable += read_failures(arr, s, e, err)
            continue
        if is_float and nonfinite is None:
            finite = np.isfinite(block.reshape(block.shape[0], -1)).all(axis=1)
            if not finite.all():
                nonfinite = s + int(np.flatnonzero(~finite)[0])
        if is_float and frames and block.size:
            lo, hi = min(lo, float(np.nanmin(block))), max(hi, float(np.nanmax(block)))
    if unreadable:
        problems.append(Problem(name, describe_unreadable(unreadable)))
    if nonfinite is not None:
        problems.append(Problem(name, f"non-finite value (NaN or inf) at step {nonfinite}."))
    if is_float and frames and np.isfinite(lo) and (why := float_frames_problem(lo, hi)):
        problems.append(Problem(name, why))
    return problems


def validate(buffer: ReplayBuffer, required_keys: tuple[str, ...] = ("action",), quick: bool = False) -> None:
    """Raise DatasetError listing every problem; return None when the buffer is valid (see ``find_problems``)."""
    problems = find_problems(buffer, required_keys, quick)
    if problems:
        where = f" ({buffer.source})" if buffer.source else ""
        lines = "\n".join(f"  - {p}" for p in problems)
        raise DatasetError(f"Invalid dataset{where}:\n{lines}\nFix the store or re-collect it with dp-collect.")
