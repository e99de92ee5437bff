"""Chunk-level integrity of zarr arrays: which chunks exist, which decode, and clear errors.

Stores dp writes carry a CRC32C checksum on every chunk (computed over the Blosc-compressed
bytes) and hold every chunk of the grid (``replay_buffer.COMPRESSORS``, ``ARRAY_CONFIG``),
so a deleted, truncated or altered chunk file is reported instead of being read as the fill
value or as garbage.
"""
from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec
from zarr.core.sync import sync
from zarr.storage import LocalStore

from dp.data.errors import DatasetError

READ_BLOCK_BYTES = 64 << 20  # bytes per read when scanning a whole array: bounded memory
FIX = "Restore the store from a backup or re-collect it with dp-collect."
METADATA_FILES = ("zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata")
MAX_LISTED = 5  # chunks named in one message


def has_checksum(arr) -> bool:
    """Whether ``arr`` is a format-3 zarr array whose chunks end in a CRC32C checksum."""
    return (
        isinstance(arr, zarr.Array)
        and arr.metadata.zarr_format == 3
        and any(isinstance(c, Crc32cCodec) for c in arr.metadata.codecs)
    )


def every_chunk_expected(arr) -> bool:
    """Whether a chunk absent from the store is damage rather than a chunk zarr chose not to write.

    zarr 3 by default does not write a chunk whose values are all the fill value, and reads
    it back as the fill value; nothing on disk tells such a chunk from a deleted one. So:
    - format 3 with the crc32c codec: written by dp with write_empty_chunks, every chunk exists;
    - format 2: zarr-python 2 (diffusion_policy's published stores) wrote every chunk;
    - format 3 without crc32c (dp stores before checksums, other writers): not checked, since
      an all-zero chunk (task_id 0, a black frame) is legitimately absent. Re-save such a store
      (``ReplayBuffer.load(src).save(dst)``) to get checksums and this check.
    """
    return isinstance(arr, zarr.Array) and (arr.metadata.zarr_format == 2 or has_checksum(arr))


def _unit(arr) -> tuple[int, ...]:
    """Shape of one stored object (a shard when sharded, else a chunk)."""
    return tuple(arr.shards or arr.chunks)


def chunk_grid(arr) -> tuple[int, ...]:
    """Number of stored chunks along each axis that the array's shape implies."""
    return tuple(math.ceil(s / c) for s, c in zip(arr.shape, _unit(arr)))


def chunk_label(arr, coords: tuple[int, ...]) -> str:
    """``chunk (3, 0) (steps 600-799, store key 'c/3/0')``: index, range on axis 0, key."""
    key = arr.metadata.encode_chunk_key(coords)
    if not coords:
        return f"chunk {coords} (store key '{key}')"
    c0 = _unit(arr)[0]
    lo, hi = coords[0] * c0, min((coords[0] + 1) * c0, arr.shape[0]) - 1
    what = "episode" if arr.path.endswith("episode_ends") else "step"
    where = f"{what} {lo}" if lo == hi else f"{what}s {lo}-{hi}"
    return f"chunk {coords} ({where}, store key '{key}')"


def _listed(labels: list[str]) -> str:
    more = f" and {len(labels) - MAX_LISTED} more" if len(labels) > MAX_LISTED else ""
    return "; ".join(labels[:MAX_LISTED]) + more


def _keys_under(store, prefix: str) -> set[str]:
    """Every key in ``store`` that starts with ``prefix`` (a folder path ending in '/')."""
    if isinstance(store, LocalStore):  # zarr's list_prefix stats every file: os.walk is ~3x faster
        keys = set()
        for folder, _, files in os.walk(Path(store.root) / prefix):
            rel = Path(folder).relative_to(store.root).as_posix()
            keys.update(f"{rel}/{f}" for f in files)
        return keys

    async def listing():
        return {k async for k in store.list_prefix(prefix)}

    return sync(listing())


def missing_chunks(arr) -> list[tuple[int, ...]]:
    """Grid coordinates of the chunks the shape implies but the store lacks, in grid order.

    Works for format 3 (``c/0/0``) and format 2 (``0.0`` or ``0/0``) keys: each key is
    encoded by the array's own metadata and looked up in one listing of the array's prefix.
    """
    prefix = f"{arr.path}/" if arr.path else ""
    present = _keys_under(arr.store, prefix)
    grid = itertools.product(*(range(n) for n in chunk_grid(arr)))
    return [c for c in grid if prefix + arr.metadata.encode_chunk_key(c) not in present]


def describe_missing(arr, coords: list[tuple[int, ...]]) -> str:
    """Problem text for missing chunks (without the array's name)."""
    labels = [chunk_label(arr, c) for c in coords]
    return (
        f"{len(coords)} chunk(s) missing from the store: {_listed(labels)}. Expected every chunk of the "
        f"{chunk_grid(arr)} grid; a missing one reads as the fill value {arr.fill_value}. {FIX}"
    )


def _reason(e: Exception) -> str:
    if "checksum" in str(e).lower():
        return "checksum mismatch (the chunk file was truncated or altered after it was written)"
    return f"cannot be decoded ({type(e).__name__}: {e})"


def step_blocks(arr, max_bytes: int = READ_BLOCK_BYTES) -> Iterator[tuple[int, int]]:
    """Ranges ``[start, stop)`` covering axis 0 of ``arr [T, ...]`` in whole chunks, ~``max_bytes`` each."""
    n = arr.shape[0] if arr.ndim else 0
    step_bytes = np.dtype(arr.dtype).itemsize * math.prod(arr.shape[1:])
    c0 = _unit(arr)[0] if isinstance(arr, zarr.Array) else 1
    size = max(1, max_bytes // max(1, step_bytes * c0)) * c0
    for s in range(0, n, size):
        yield s, min(n, s + size)


def read_failures(arr, start: int, stop: int, error: Exception) -> list[str]:
    """Why reading steps ``[start, stop)`` raised ``error``: ``'<chunk>: <reason>'`` per chunk that
    fails to read alone, or one entry for the whole range when none does."""
    unit = _unit(arr)
    rows = range(start // unit[0], math.ceil(stop / unit[0]))
    failures = []
    for coords in itertools.product(rows, *(range(n) for n in chunk_grid(arr)[1:])):
        try:
            arr[tuple(slice(i * u, (i + 1) * u) for i, u in zip(coords, unit))]
        except MemoryError:
            raise
        except Exception as e:  # zarr and its codecs raise ValueError, RuntimeError, ...
            failures.append(f"{chunk_label(arr, coords)}: {_reason(e)}")
    return failures or [f"steps {start}-{stop - 1}: {_reason(error)}"]


def describe_unreadable(failures: list[str]) -> str:
    """Problem text for ``read_failures`` (without the array's name)."""
    return f"unreadable: {_listed(failures)}. {FIX}"


def read_steps(arr, start: int, stop: int) -> np.ndarray:
    """``arr[start:stop]`` as numpy; a chunk that fails to read raises one DatasetError naming it.

    The error names the store, the array, the chunk and its step range; zarr's own error
    (a Blosc or checksum failure deep in its event loop) is kept as the cause.
    """
    if not isinstance(arr, zarr.Array):
        return np.asarray(arr[start:stop])
    try:
        return np.asarray(arr[start:stop])
    except MemoryError:
        raise
    except Exception as e:
        failures = read_failures(arr, start, stop, e)
        raise DatasetError(f"{store_name(arr)}: {arr.path}: {describe_unreadable(failures)}") from e


def read_all(arr) -> np.ndarray:
    """The whole array as numpy, read in bounded blocks; a missing (see ``every_chunk_expected``)
    or unreadable chunk raises DatasetError naming it."""
    if not isinstance(arr, zarr.Array) or arr.ndim == 0:
        return np.asarray(arr[...])
    if every_chunk_expected(arr) and (missing := missing_chunks(arr)):
        raise DatasetError(f"{store_name(arr)}: {arr.path}: {describe_missing(arr, missing)}")
    out = np.empty(arr.shape, dtype=arr.dtype)
    for s, e in step_blocks(arr):
        out[s:e] = read_steps(arr, s, e)
    return out


def store_name(arr_or_group) -> str:
    """The store's directory (local stores) or zarr's description of it."""
    store = arr_or_group.store
    return str(getattr(store, "root", store))


def damaged_metadata(path: Path) -> list[str]:
    """``'<file>: <JSON error>'`` for each zarr metadata file under a local store that is not valid JSON."""
    path = Path(path)
    found = []
    for root, dirs, files in os.walk(path):
        if "zarr.json" in files and "c" in dirs:
            dirs.remove("c")  # a format-3 array's chunk tree: no metadata below
        for name in sorted(set(files) & set(METADATA_FILES)):
            f = Path(root) / name
            try:
                json.loads(f.read_bytes())
            except (ValueError, UnicodeDecodeError) as e:
                found.append(f"{f.relative_to(path)}: {type(e).__name__}: {e}")
    return sorted(found)
