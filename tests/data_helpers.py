"""Small stores written the way real ones are, for tests."""
from __future__ import annotations

import numpy as np
import zarr


def random_episodes(lengths, state_dim=5, action_dim=2, image_hw=None, seed=0):
    rng = np.random.default_rng(seed)
    eps = []
    for L in lengths:
        ep = {
            "state": rng.normal(size=(L, state_dim)).astype(np.float32),
            "action": rng.normal(size=(L, action_dim)).astype(np.float32),
        }
        if image_hw:
            ep["img"] = rng.integers(0, 256, size=(L, *image_hw, 3), dtype=np.uint8)
        eps.append(ep)
    return eps


def write_pusht_style_v2(path, lengths=(7, 3, 12), seed=0):
    """A diffusion_policy PushT-style store in zarr format 2 (its published layout)."""
    rng = np.random.default_rng(seed)
    T = int(sum(lengths))
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    data = root.create_group("data")
    arrays = {
        "img": rng.integers(0, 256, size=(T, 96, 96, 3), dtype=np.uint8),
        "state": rng.uniform(0, 512, size=(T, 5)).astype(np.float32),
        "action": rng.uniform(0, 512, size=(T, 2)).astype(np.float32),
        "keypoint": rng.uniform(0, 512, size=(T, 9, 2)).astype(np.float32),
        "n_contacts": rng.integers(0, 3, size=(T, 1)).astype(np.float32),
    }
    for k, v in arrays.items():
        a = data.create_array(k, shape=v.shape, dtype=v.dtype, chunks=(min(T, 100), *v.shape[1:]))
        a[:] = v
    ends = root.create_group("meta").create_array("episode_ends", shape=(len(lengths),), dtype="int64")
    ends[:] = np.cumsum(lengths)
    return arrays, np.cumsum(lengths)
