"""Truncated sampling's last step, run outside a planned (graphed, exported) prediction: the rows
whose best anchor scored low lie outside every anchor's support and take a full sample instead.
It reads the scores on the host once per prediction, so it cannot live inside the graph; the full
sample runs only when a row needs it (DiffusionDrive's anchors cover most observations)."""
from __future__ import annotations

from typing import Callable

import torch


def with_fallback(actions: torch.Tensor, score: torch.Tensor, threshold: float,
                  sample_in_full: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, int]:
    """actions [B, H, A] from the anchors, score [B] the best anchor's sigmoid score per row,
    ``sample_in_full()`` -> [B, H, A] for every row. -> (actions, how many rows fell back)."""
    unsure = score < threshold
    n = int(unsure.sum())
    if n == 0:
        return actions, 0
    return torch.where(unsure[:, None, None], sample_in_full(), actions), n
