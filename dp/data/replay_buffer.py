"""ReplayBuffer: episodes stored in diffusion_policy's zarr layout.

On disk (a user can open it with plain ``zarr.open_group``)::

    data/<key>          [T, ...]   every step of every episode, concatenated on axis 0
    meta/episode_ends   [E] int64  cumulative end index of each episode (exclusive)
    .attrs              free-form metadata (task, instructions, seeds, dp version, ...)

Reads zarr format 2 (the stores diffusion_policy published, e.g. PushT) and format 3.
Writes format 3 with Blosc zstd and a CRC32C checksum per chunk, every chunk written (see
``dp.data.integrity``); low-dim arrays are chunked about one episode long, images one
frame per chunk. A damaged chunk or metadata file raises DatasetError naming it.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import zarr
import zarr.storage
from zarr.codecs import BloscCodec, Crc32cCodec

from dp.data.errors import DatasetError
from dp.data.frames import is_frames
from dp.data.integrity import FIX, damaged_metadata, read_all, read_steps

FORMAT_VERSION = 1  # bump (and note in CHANGELOG) if the on-disk layout changes
# Blosc first, then crc32c: the checksum covers the compressed bytes on disk, so a flipped
# or missing byte fails the check before Blosc runs (Blosc alone can decode a damaged chunk
# to wrong values without complaint).
COMPRESSORS = (BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle"), Crc32cCodec())
# zarr 3 skips chunks that are all fill value unless told otherwise; dp writes every chunk,
# so a chunk missing from a dp store always means damage (see integrity.every_chunk_expected).
ARRAY_CONFIG = {"write_empty_chunks": True}
DEFAULT_TIME_CHUNK = 200  # steps; about one episode of the tasks dp ships


def _is_image(arr_shape: tuple[int, ...], dtype) -> bool:
    return np.dtype(dtype) == np.uint8 and is_frames(arr_shape)


def _chunks_for(shape: tuple[int, ...], dtype, time_chunk: int) -> tuple[int, ...]:
    if _is_image(shape, dtype):
        return (1, *shape[1:])
    return (max(1, time_chunk), *shape[1:])


class ReplayBuffer:
    """Episodes as concatenated arrays plus ``episode_ends``.

    Backed either by a zarr group (``open``/``create``) or by numpy arrays in memory
    (``load``/``empty``): the same methods work on both.
    """

    def __init__(self, data: Mapping, episode_ends, attrs: Mapping | None = None, root=None, source: str | None = None):
        self.data = data  # key -> zarr.Array or np.ndarray
        self._episode_ends = episode_ends  # zarr.Array or np.ndarray
        self.attrs = attrs if attrs is not None else {}
        self.root = root  # the zarr group when backed by one
        self.source = source  # the store's path, kept by in-memory copies for messages

    # ------------------------------------------------------------------ construction
    @classmethod
    def empty(cls) -> "ReplayBuffer":
        """An in-memory buffer with no episodes."""
        return cls({}, np.zeros((0,), dtype=np.int64), {})

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> "ReplayBuffer":
        """Open an existing store (format 2 or 3) without loading it: a directory, or a zip of one
        (``.zarr.zip``, as diffusion_policy publishes PushT; read-only)."""
        path = Path(path)
        if not path.exists():
            raise DatasetError(
                f"No dataset at {path}. Expected a zarr store (a directory, or a .zarr.zip). "
                "Make one with `dp-collect task=<task> output=<path>`."
            )
        zipped = path.suffix == ".zip"
        if zipped and mode != "r":
            raise DatasetError(f"{path} is a zipped store, which opens read-only; unzip it to write to it.")
        try:
            # arrays opened here keep this config: appends in mode r+/a write every chunk too
            with zarr.config.set({"array.write_empty_chunks": True}):
                return cls._open_layout(path, zarr.storage.ZipStore(path, mode="r") if zipped else str(path), mode)
        except DatasetError:
            raise
        except Exception as e:  # zarr raises JSON, key, type and value errors for damaged stores
            raise _unreadable(path, e) from e

    @classmethod
    def _open_layout(cls, path: Path, store, mode: str) -> "ReplayBuffer":
        root = zarr.open_group(store, mode=mode)
        for group in ("data", "meta"):
            if group not in root:
                raise DatasetError(
                    f"{path}: missing group '{group}/'. Expected diffusion_policy's layout "
                    "data/<key>[T,...] and meta/episode_ends[E]; found top-level keys "
                    f"{sorted(root.keys())}."
                )
        meta = root["meta"]
        if "episode_ends" not in meta:
            raise DatasetError(f"{path}: missing 'meta/episode_ends' (cumulative episode end indices, int64).")
        data = {k: root["data"][k] for k in root["data"].array_keys()}
        return cls(data, meta["episode_ends"], root.attrs, root, source=str(path))

    @classmethod
    def create(cls, path: str | os.PathLike, overwrite: bool = False) -> "ReplayBuffer":
        """Create an empty format-3 store at ``path``."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise DatasetError(f"{path} already exists; pass overwrite=True or choose another path.")
        root = zarr.open_group(str(path), mode="w", zarr_format=3)
        root.require_group("data")
        ends = root.require_group("meta").create_array(
            "episode_ends", shape=(0,), chunks=(4096,), dtype="int64", compressors=COMPRESSORS, config=ARRAY_CONFIG
        )
        root.attrs["dp_format_version"] = FORMAT_VERSION
        return cls({}, ends, root.attrs, root, source=str(path))

    @classmethod
    def load(cls, path: str | os.PathLike, keys: list[str] | None = None) -> "ReplayBuffer":
        """Open a store and copy it (or only ``keys``) into memory as numpy arrays."""
        src = cls.open(path)
        return src.to_memory(keys)

    def to_memory(self, keys: list[str] | None = None) -> "ReplayBuffer":
        keys = self.keys() if keys is None else list(keys)
        self._require(keys)
        data = {k: read_all(self.data[k]) for k in keys}
        return ReplayBuffer(data, self.episode_ends, dict(self.attrs), source=self.source)

    def save(self, path: str | os.PathLike, time_chunk: int | None = None, overwrite: bool = False) -> "ReplayBuffer":
        """Write this buffer as a new format-3 store (zarr 3 has no copy_store: copied per array)."""
        out = ReplayBuffer.create(path, overwrite=overwrite)
        chunk = time_chunk or self._default_time_chunk()
        for k in self.keys():
            arr = self.data[k]
            n = arr.shape[0]
            out._create_array(k, tuple(arr.shape[1:]), arr.dtype, chunk, length=n)
            step = max(chunk, 1) * (1 if not _is_image(arr.shape, arr.dtype) else 64)
            for s in range(0, n, step):  # bounded memory for on-disk sources
                out.data[k][s : min(n, s + step)] = read_steps(arr, s, min(n, s + step))
        out._episode_ends.resize((self.n_episodes,))
        out._episode_ends[:] = self.episode_ends
        out.attrs.update({k: v for k, v in dict(self.attrs).items()})
        return out

    # ------------------------------------------------------------------ properties
    @property
    def episode_ends(self) -> np.ndarray:
        return read_all(self._episode_ends).astype(np.int64, copy=False)

    @property
    def n_episodes(self) -> int:
        return int(self._episode_ends.shape[0])

    @property
    def n_steps(self) -> int:
        n = self.n_episodes
        return int(read_steps(self._episode_ends, n - 1, n)[0]) if n else 0

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self.episode_ends, prepend=0)

    @property
    def backend(self) -> str:
        return "zarr" if self.root is not None else "numpy"

    @property
    def zarr_format(self) -> int | None:
        return None if self.root is None else int(self.root.metadata.zarr_format)

    def keys(self) -> list[str]:
        return sorted(self.data.keys())

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def __getitem__(self, key: str):
        self._require([key])
        return self.data[key]

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}{tuple(self.data[k].shape)}:{self.data[k].dtype}" for k in self.keys())
        return f"ReplayBuffer({self.backend}, episodes={self.n_episodes}, steps={self.n_steps}, {shapes})"

    def _require(self, keys) -> None:
        missing = [k for k in keys if k not in self.data]
        if missing:
            raise DatasetError(
                f"Dataset has no key(s) {missing}; it has data/{self.keys()}. "
                "Check the task config's obs keys or re-collect with the needed observations."
            )

    def _default_time_chunk(self) -> int:
        lengths = self.episode_lengths
        return int(np.median(lengths)) if len(lengths) else DEFAULT_TIME_CHUNK

    # ------------------------------------------------------------------ episodes
    def episode_slice(self, i: int) -> slice:
        if not -self.n_episodes <= i < self.n_episodes:
            raise IndexError(f"episode {i} out of range: the dataset has {self.n_episodes} episodes.")
        i = i % self.n_episodes
        ends = read_steps(self._episode_ends, max(i - 1, 0), i + 1)
        return slice(0 if i == 0 else int(ends[0]), int(ends[-1]))

    def get_episode(self, i: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """One episode as numpy arrays, ``{key: [T_i, ...]}``."""
        keys = self.keys() if keys is None else keys
        self._require(keys)
        s = self.episode_slice(i)
        return {k: read_steps(self.data[k], s.start, s.stop) for k in keys}

    def _create_array(self, key: str, tail_shape: tuple[int, ...], dtype, time_chunk: int, length: int = 0) -> None:
        shape = (length, *tail_shape)
        if self.root is not None:
            self.data[key] = self.root["data"].create_array(
                key,
                shape=shape,
                chunks=_chunks_for(shape, dtype, time_chunk),
                dtype=dtype,
                compressors=COMPRESSORS,
                config=ARRAY_CONFIG,
            )
        else:
            self.data[key] = np.zeros(shape, dtype=dtype)

    def add_episode(self, episode: Mapping[str, np.ndarray], time_chunk: int | None = None) -> None:
        """Append one episode ``{key: [T, ...]}``; every key present in the buffer must be given."""
        episode = {k: np.asarray(v) for k, v in episode.items()}
        if not episode:
            raise DatasetError("add_episode got an empty dict; expected {key: array[T, ...]}.")
        lengths = {k: v.shape[0] if v.ndim else 0 for k, v in episode.items()}
        T = next(iter(lengths.values()))
        if T == 0 or any(n != T for n in lengths.values()):
            raise DatasetError(f"Episode arrays must share a non-zero length on axis 0; got lengths {lengths}.")
        if self.n_episodes and set(episode) != set(self.data):
            raise DatasetError(
                f"Episode keys {sorted(episode)} differ from the dataset's keys {self.keys()}; "
                "every episode must provide the same keys."
            )
        for k, v in episode.items():
            if k not in self.data:
                self._create_array(k, v.shape[1:], v.dtype, time_chunk or DEFAULT_TIME_CHUNK)
            arr = self.data[k]
            if tuple(arr.shape[1:]) != v.shape[1:]:
                raise DatasetError(f"Key '{k}': dataset has per-step shape {tuple(arr.shape[1:])}, episode has {v.shape[1:]}.")
            if np.dtype(arr.dtype) != v.dtype:
                raise DatasetError(f"Key '{k}': dataset dtype {arr.dtype}, episode dtype {v.dtype}; cast before adding.")
        # arrays first, episode_ends last: a crash mid-append leaves ends consistent with
        # what validate() reports, never an end past the data.
        n0 = self.n_steps
        for k, v in episode.items():
            if self.root is not None:
                self.data[k].append(v, axis=0)
            else:
                self.data[k] = np.concatenate([self.data[k][:n0], v], axis=0)
        new_end = np.array([n0 + T], dtype=np.int64)
        if self.root is not None:
            self._episode_ends.append(new_end)
        else:
            self._episode_ends = np.concatenate([self._episode_ends, new_end])


def _unreadable(path: Path, e: Exception) -> DatasetError:
    """One-line error for a store zarr cannot open, naming the damaged metadata file when there is one."""
    bad = damaged_metadata(path)
    if bad:
        return DatasetError(
            f"{path}: damaged zarr metadata ({'; '.join(bad)}); expected the JSON zarr writes there "
            f"(zarr.json, or .zarray/.zgroup for format 2). {FIX}"
        )
    return DatasetError(
        f"{path} is not a readable zarr group ({type(e).__name__}: {e}). Expected a zarr store (format 2 or 3) "
        f"with data/<key> arrays and meta/episode_ends. {FIX}"
    )
