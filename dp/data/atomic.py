"""Write a store under a temporary name and rename it into place only when complete."""
from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

from dp.data.errors import DatasetError

_LEFTOVER = re.compile(r"\.(?P<kind>[a-z]+)-(?P<pid>\d+)$")  # "<name>.tmp-<pid>", "<name>.old-<pid>"


def fsync_dir(path: Path) -> None:
    """fsync a directory, so entries created or renamed in it survive a power loss.

    A no-op where the platform or filesystem cannot fsync directories (Windows, some network
    filesystems); other errors (EIO: the data did not reach the disk) are raised.
    """
    if os.name == "nt":  # directories cannot be opened there
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file and directory under ``path`` (``path`` included; symlinks are not followed).

    Call it before renaming a finished temp directory into place: a rename can reach the
    disk before the data it names, so a power loss could otherwise leave a complete-looking
    name over empty or partial files.
    """
    if os.name == "nt":  # fsync needs a writable handle there; the rename is still atomic
        return
    path = Path(path)
    if not path.is_dir():
        _fsync_file(path)
        return
    for root, _dirs, files in os.walk(path):
        for name in files:
            f = os.path.join(root, name)
            if not os.path.islink(f):
                _fsync_file(f)
        fsync_dir(Path(root))


def _fsync_file(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (signal 0 checks without sending)."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there: assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # exists under another user / not a pid we could have written
        return True
    return True


def remove_stale_tmp(parent: Path, pattern_prefix: str, kinds: tuple[str, ...] = ("tmp",)) -> list[Path]:
    """Remove ``<pattern_prefix>*.tmp-<pid>`` entries of ``parent`` whose writer process is dead.

    These are what a writer killed outright (``kill -9``, OOM, power loss) leaves behind;
    entries of live processes (another writer at work right now) are kept. ``kinds`` names
    the suffixes to consider (``("tmp", "old")`` also matches ``.old-<pid>``). The pid is
    checked on this machine only, so do not share a destination between hosts.
    Returns the removed paths.
    """
    parent = Path(parent)
    if not parent.is_dir():
        return []
    removed = []
    for entry in sorted(parent.iterdir()):
        m = _LEFTOVER.search(entry.name)
        if not (entry.name.startswith(pattern_prefix) and m and m["kind"] in kinds):
            continue
        if _pid_alive(int(m["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


@contextmanager
def atomic_store(dst: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary sibling path; on success it replaces ``dst``, on error it is removed.

    An interrupted writer (exception, Ctrl-C) leaves nothing under ``dst``. A crash that
    kills the process outright leaves only ``<dst>.tmp-<pid>``, never a half-written ``dst``;
    the next ``atomic_store`` to the same ``dst`` removes it. The finished store is fsynced
    before it is renamed into place.
    """
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise DatasetError(f"{dst} already exists; pass overwrite=true to replace it, or choose another output.")
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(dst.parent, f"{dst.name}.tmp-")
    if dst.exists():
        # <dst>.old-<pid> of a dead writer is a superseded copy only while dst exists: a crash
        # between the two renames below leaves it as the sole copy, so it is kept then.
        remove_stale_tmp(dst.parent, f"{dst.name}.old-", kinds=("old",))
    tmp = dst.with_name(f"{dst.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_tree(tmp)
    if dst.exists():
        old = dst.with_name(f"{dst.name}.old-{os.getpid()}")
        os.rename(dst, old)
        os.rename(tmp, dst)
        fsync_dir(dst.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, dst)
        fsync_dir(dst.parent)


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
