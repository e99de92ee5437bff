"""Camera frames read from the store on demand, with a bounded cache: image stores larger than memory.

    frames = LazyFrames(root["data/img"], cache_bytes=512 << 20)
    frames[np.array([[3, 4], [90, 91]])]      # uint8 [2, 2, H, W, C], reading only the chunks it needs

It stands in for the numpy array ``SequenceDataset`` would otherwise hold (``shape``, ``dtype``,
``ndim``, ``len``, fancy indexing on axis 0). Decoded chunks are kept in a least-recently-used cache
of at most ``cache_bytes``; dp stores one frame per image chunk, so a window's frames cost one
decompression each the first time. Float frames holding 0..255 (diffusion_policy's PushT store) are
converted per chunk, as the in-memory path converts them at load (dp/data/frames.py).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from dp.data.errors import DatasetError
from dp.data.frames import as_uint8_frames
from dp.data.integrity import read_steps

# chunks fetched per store call: zarr reads and decodes a call's chunks concurrently (1.4x the windows/s of
# one call per chunk on the 2-core VM), while a bounded group keeps the transient buffers small
READ_GROUP = 64


class LazyFrames:
    def __init__(self, array, cache_bytes: int, name: str = "frames"):
        self.array, self.name = array, name
        self.shape = tuple(array.shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(np.uint8)
        self.chunk = int(array.chunks[0])
        self.cache_bytes = int(cache_bytes)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._held = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes of the whole array as uint8 (what the in-memory path would hold)."""
        return int(np.prod(self.shape))

    def _store(self, c: int, frames: np.ndarray) -> None:
        self._cache[c] = frames
        self._held += frames.nbytes
        while self._held > self.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._held -= old.nbytes

    def _load(self, chunks: np.ndarray) -> dict[int, np.ndarray]:
        """Decoded chunks ``chunks`` (unique ids), reading the missing ones from the store in one call
        (zarr fetches and decodes them concurrently); a chunk that fails is then named by ``read_steps``."""
        got, missing = {}, []
        for c in chunks.tolist():
            frames = self._cache.get(c)
            if frames is None:
                missing.append(c)
            else:
                self.hits += 1
                self._cache.move_to_end(c)
                got[c] = frames
        if missing:
            self.misses += len(missing)
            for group in range(0, len(missing), READ_GROUP):
                for c, frames in self._read(missing[group:group + READ_GROUP]):
                    got[c] = frames
                    self._store(c, frames)
        return got

    def _read(self, chunks: list[int]):
        """(chunk id, uint8 frames) for ``chunks``, read from the store in one call."""
        spans = [(c * self.chunk, min((c + 1) * self.chunk, self.shape[0])) for c in chunks]
        steps = np.concatenate([np.arange(lo, hi) for lo, hi in spans])
        try:
            block = self.array.oindex[steps]
        except Exception:  # noqa: BLE001 - find the damaged chunk and name it
            for lo, hi in spans:
                read_steps(self.array, lo, hi)
            raise
        at = 0
        for c, (lo, hi) in zip(chunks, spans):
            try:
                yield c, as_uint8_frames(np.asarray(block[at:at + hi - lo]), self.name)
            except ValueError as e:
                raise DatasetError(str(e)) from None
            at += hi - lo

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, slice):
            index = np.arange(*index.indices(self.shape[0]))
        t = np.asarray(index, dtype=np.int64)
        flat = t.reshape(-1)
        out = np.empty((flat.size, *self.shape[1:]), dtype=np.uint8)
        chunks = flat // self.chunk
        unique = np.unique(chunks)
        loaded = self._load(unique)
        for c in unique.tolist():
            rows = np.flatnonzero(chunks == c)
            out[rows] = loaded[c][flat[rows] - c * self.chunk]
        return out.reshape(*t.shape, *self.shape[1:])

    def __array__(self, dtype=None, copy=None):
        whole = self[slice(None)]
        return whole if dtype is None else whole.astype(dtype)
