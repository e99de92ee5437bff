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


def write_pusht_style_v2(path, lengths=(7, 3, 12), seed=0, zipped=False):
    """A diffusion_policy PushT-style store in zarr format 2, as it is published: ``data/img`` float32
    holding 0..255, no ``agent_pos`` (it is ``state[0:2]``); ``zipped``: as ``pusht_cchi_v7_replay.zarr.zip``
    (a zip of the store directory; ``path`` should then end in .zarr.zip)."""
    import shutil
    import tempfile
    import zipfile
    from pathlib import Path

    rng = np.random.default_rng(seed)
    T = int(sum(lengths))
    folder = Path(tempfile.mkdtemp()) / "store.zarr" if zipped else Path(path)
    root = zarr.open_group(str(folder), mode="w", zarr_format=2)
    data = root.create_group("data")
    arrays = {
        "img": rng.integers(0, 256, size=(T, 96, 96, 3)).astype(np.float32),
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
    if zipped:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            for f in sorted(folder.rglob("*")):
                if f.is_file():
                    z.write(f, f.relative_to(folder).as_posix())
        shutil.rmtree(folder.parent)
    return arrays, np.cumsum(lengths)
