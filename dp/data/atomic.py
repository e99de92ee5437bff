"""Write a store under a temporary name and rename it into place only when complete."""
from __future__ import annotations

import os
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

from dp.data.errors import DatasetError


@contextmanager
def atomic_store(dst: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary sibling path; on success it replaces ``dst``, on error it is removed.

    An interrupted writer (exception, Ctrl-C) leaves nothing under ``dst``. A crash that
    kills the process outright leaves only ``<dst>.tmp-<pid>``, never a half-written ``dst``.
    """
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise DatasetError(f"{dst} already exists; pass overwrite=true to replace it, or choose another output.")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f"{dst.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dst.exists():
        old = dst.with_name(f"{dst.name}.old-{os.getpid()}")
        os.rename(dst, old)
        os.rename(tmp, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, dst)


class GracefulInterrupt:
    """Defer SIGINT/SIGTERM to points the caller chooses (``check()``).

    zarr 3 writes chunks from a background event loop; a KeyboardInterrupt raised in the
    middle of a write can leave that loop writing files after cleanup has run. Deferring
    the signal to a point between writes makes the interrupt clean.
    """

    def __init__(self):
        self.received: int | None = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def check(self) -> None:
        if self.received is not None:
            raise KeyboardInterrupt(f"interrupted by signal {signal.Signals(self.received).name}")

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False
