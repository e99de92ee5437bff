"""Which windows each training step uses: a pure function of (seed, step, rank).

Epoch e visits a seeded permutation of all windows; rank r of W takes every W-th entry.
Because batch k depends on nothing but k, a resumed run sees exactly the batches the
uninterrupted run would have seen, with no sampler state to save.
"""
from __future__ import annotations

import numpy as np

from dp.errors import ConfigError


class StepBatches:
    def __init__(self, n_windows: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed, self.rank, self.world = n_windows, batch_size, seed, rank, world
        per_rank = n_windows // world
        self.batches_per_epoch = per_rank // batch_size
        if self.batches_per_epoch < 1:
            raise ConfigError(
                f"Dataset has {n_windows} training windows; batch_size {batch_size} x {world} process(es) needs more. "
                "Lower training.batch_size or collect more episodes."
            )
        self._epoch, self._perm = -1, None

    def indices(self, step: int) -> np.ndarray:
        epoch, pos = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._perm, self._epoch = perm[self.rank :: self.world], epoch
        return self._perm[pos * self.batch_size : (pos + 1) * self.batch_size]

    def epoch(self, step: int) -> int:
        return step // self.batches_per_epoch
