"""Distinct memory the matrix products of a call read: at batch 1 a denoiser's time goes
to reading its weights, so this counts what a prediction costs in memory traffic.

    with MatmulReads() as reads:
        policy.predict_action(obs)
    reads.megabytes   # union of every linear/matmul operand's bytes (weights, and the small activations)

Counted from the operands' addresses, strides and sizes, so a window of a larger tensor
counts only its own rows, and memory read by several products counts once.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
# under inference_mode linear and matmul reach the dispatcher whole, otherwise as addmm/mm/bmm
MATMULS = {aten.linear.default, aten.matmul.default, aten.addmm.default, aten.mm.default, aten.bmm.default,
           aten.baddbmm.default}


def byte_runs(t: torch.Tensor) -> np.ndarray:
    """[R, 2] (start, end) byte addresses that tensor ``t`` covers: one run per row of its
    stride-1 dimension (one span when it is contiguous or has no stride-1 dimension)."""
    size, start = t.element_size(), t.data_ptr()
    if t.numel() == 0:
        return np.empty((0, 2), dtype=np.int64)
    if t.is_contiguous() or t.dim() <= 1 or 1 not in t.stride():
        span = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
        return np.array([[start, start + span * size]], dtype=np.int64)
    inner = t.stride().index(1)
    outer = [d for d in range(t.dim()) if d != inner]
    grids = np.meshgrid(*[np.arange(t.shape[d]) * t.stride(d) for d in outer], indexing="ij")
    starts = start + size * sum(g.reshape(-1) for g in grids)
    return np.stack([starts, starts + size * t.shape[inner]], axis=1).astype(np.int64)


def union_bytes(runs: list[np.ndarray]) -> int:
    """Total length of the union of [start, end) intervals."""
    if not runs:
        return 0
    iv = np.concatenate(runs)
    iv = iv[np.argsort(iv[:, 0], kind="stable")]
    ends = np.maximum.accumulate(iv[:, 1])
    gap_before = np.r_[True, iv[1:, 0] > ends[:-1]]  # an interval that starts a new merged block
    lo = np.minimum.reduceat(iv[:, 0], np.flatnonzero(gap_before))
    hi = np.maximum.reduceat(iv[:, 1], np.flatnonzero(gap_before))
    return int((hi - lo).sum())


class MatmulReads(TorchDispatchMode):
    """Records every matrix product's tensor operands while active; ``megabytes`` is their union."""

    def __init__(self):
        super().__init__()
        self.runs: list[np.ndarray] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in MATMULS:
            self.runs += [byte_runs(a) for a in args if isinstance(a, torch.Tensor)]
        return func(*args, **(kwargs or {}))

    @property
    def megabytes(self) -> float:
        return union_bytes(self.runs) / 1e6
