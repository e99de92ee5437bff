"""When values derived from weights (fused experts, instruction encodings) must be recomputed."""
from __future__ import annotations

from collections.abc import Iterable

import torch


def weights_key(params: Iterable[torch.Tensor]) -> tuple:
    """A key that changes whenever any of ``params`` is replaced (``.to(device)``, a new
    module) or updated in place (optimizer and EMA steps, ``load_state_dict``: each bumps the
    tensor's version counter). Cheap enough to check on every prediction."""
    return tuple((p.data_ptr(), p._version) for p in params)
