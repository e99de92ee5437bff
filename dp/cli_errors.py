"""How dp's command-line tools end on an error the user can fix: the message, no traceback."""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from omegaconf import DictConfig, OmegaConf

from dp.train.checkpoint import CheckpointError

T = TypeVar("T")
USER_ERRORS = (CheckpointError, ValueError, KeyError)  # bad checkpoint path, config value or key


def run_config(fn: Callable[..., T], cfg: DictConfig) -> T:
    """``fn(**cfg)`` with the hydra config resolved to plain values; an error in ``USER_ERRORS``
    prints ``error: <message>`` to stderr and exits with status 2."""
    try:
        return fn(**OmegaConf.to_container(cfg, resolve=True))
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
