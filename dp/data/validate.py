"""Checks that a ReplayBuffer is well formed; every problem names its key."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dp.data.errors import DatasetError
from dp.data.replay_buffer import ReplayBuffer

# Expected dtype kinds for the keys dp writes ("f" float, "u" unsigned, "i" signed int).
EXPECTED_KINDS = {
    "action": "f",
    "state": "f",
    "img": "u",
    "image": "u",
    "task_id": "iu",
}
SCAN_CHUNK = 1 << 16  # steps per NaN scan block: bounded memory on big image stores


@dataclass
class Problem:
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def find_problems(buffer: ReplayBuffer, required_keys: tuple[str, ...] = ("action",)) -> list[Problem]:
    """Every problem found; an empty list means the buffer is valid."""
    problems: list[Problem] = []
    ends_arr = buffer._episode_ends
    if not np.issubdtype(np.dtype(ends_arr.dtype), np.integer):
        problems.append(Problem("meta/episode_ends", f"dtype {ends_arr.dtype}, expected an integer type (int64)."))
        return problems
    if len(ends_arr.shape) != 1:
        problems.append(Problem("meta/episode_ends", f"shape {tuple(ends_arr.shape)}, expected 1-D [E]."))
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
            want = {"f": "a float type", "u": "uint8", "iu": "an integer type"}[kinds]
            problems.append(Problem(name, f"dtype {arr.dtype}, expected {want}."))
        if np.dtype(arr.dtype).kind == "f":
            bad = _first_nonfinite(arr)
            if bad is not None:
                problems.append(Problem(name, f"non-finite value (NaN or inf) at step {bad}."))
    return problems


def _first_nonfinite(arr) -> int | None:
    for s in range(0, arr.shape[0], SCAN_CHUNK):
        block = np.asarray(arr[s : s + SCAN_CHUNK])
        finite = np.isfinite(block.reshape(block.shape[0], -1)).all(axis=1)
        if not finite.all():
            return s + int(np.flatnonzero(~finite)[0])
    return None


def validate(buffer: ReplayBuffer, required_keys: tuple[str, ...] = ("action",)) -> None:
    """Raise DatasetError listing every problem; return None when the buffer is valid."""
    problems = find_problems(buffer, required_keys)
    if problems:
        where = f" ({buffer.root.store})" if buffer.root is not None else ""
        lines = "\n".join(f"  - {p}" for p in problems)
        raise DatasetError(f"Invalid dataset{where}:\n{lines}\nFix the store or re-collect it with dp-collect.")
