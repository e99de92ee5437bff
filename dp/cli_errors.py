"""How dp's command-line tools end on an error the user can fix: ``error: <message>`` on
stderr and exit status 2, no traceback. Anything else is a bug and keeps its traceback.

User errors are ``dp.errors.UserError`` (config values, datasets, checkpoints, training that
diverged), ``dp.envs.errors.EnvConfigError`` (task names, env options) and ``OSError`` with a
file name or a file-system errno (a full disk, a read-only or missing directory).
"""
from __future__ import annotations

import errno
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from omegaconf import DictConfig, OmegaConf

from dp.errors import UserError
from dp.envs.errors import EnvConfigError

T = TypeVar("T")
USER_ERRORS = (UserError, EnvConfigError)
EXIT_USER_ERROR = 2
# errno -> what to do about it
FILE_SYSTEM_HINTS = {
    errno.ENOSPC: "free disk space or choose another output_dir",
    errno.EDQUOT: "free disk space or choose another output_dir",
    errno.EACCES: "choose a writable output_dir",
    errno.EPERM: "choose a writable output_dir",
    errno.EROFS: "choose an output_dir on a writable file system",
    errno.ENOTDIR: "a file is in the way of a directory; choose another output_dir",
    errno.EEXIST: "a file is in the way; remove it or choose another path",
    errno.EISDIR: "a directory is in the way of a file; choose another path",
    errno.ENOENT: "check the path",
}


def user_error_message(e: BaseException) -> str | None:
    """The one-line message for an error the user can fix; None for anything else (a bug)."""
    if isinstance(e, USER_ERRORS):
        return str(e)
    if isinstance(e, OSError) and e.errno in FILE_SYSTEM_HINTS:
        where = f" ({e.filename})" if e.filename else ""
        return f"{e.strerror or e}{where}: {FILE_SYSTEM_HINTS[e.errno]}."
    return None


@contextmanager
def user_errors_exit() -> Iterator[None]:
    """Turn a user error raised inside the block into ``error: ...`` and exit status 2."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - re-raised unless it is a user error
        message = user_error_message(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def run_config(fn: Callable[..., T], cfg: DictConfig) -> T:
    """``fn(**cfg)`` with the hydra config resolved to plain values, user errors ending the process."""
    with user_errors_exit():
        return fn(**OmegaConf.to_container(cfg, resolve=True))
