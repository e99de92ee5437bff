"""Windows/s of SequenceDataset against a plain per-sample Python sampler.

The baseline is diffusion_policy's way: for each window, slice the episode and copy
it into a padded array, one sample at a time. dp gathers a batch of windows with one
fancy index per key (``SequenceDataset.get_batch``); ``__getitem__`` is the per-item
path a DataLoader uses.

Stores are built at Meta-World shapes (state 39, action 4, images 84x84x3) with
random content; throughput does not depend on the values.
"""
from __future__ import annotations

import numpy as np

from dp.data import ReplayBuffer, SequenceDataset
from dp.results import median_time, write_result

HORIZON, TO, TA = 16, 2, 8
BATCH = 256


def _buffer(n_episodes: int, length: int, image: bool, seed: int = 0) -> ReplayBuffer:
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer.empty()
    T = n_episodes * length
    buf.data = {
        "state": rng.normal(size=(T, 39)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(T, 4)).astype(np.float32),
    }
    if image:
        buf.data["img"] = rng.integers(0, 256, size=(T, 84, 84, 3), dtype=np.uint8)
    buf._episode_ends = np.arange(1, n_episodes + 1, dtype=np.int64) * length
    return buf


class PerSampleSampler:
    """Reference: diffusion_policy-style index list and per-window slice + pad copy."""

    def __init__(self, buffer: ReplayBuffer, keys: dict[str, str]):
        self.data = {name: buffer.data[key] for name, key in keys.items()}
        self.data["action"] = buffer.data["action"]
        self.indices = []
        start = 0
        for end in buffer.episode_ends:
            L = int(end - start)
            for idx in range(-(TO - 1), L - HORIZON + (TA - 1) + 1):
                bs, be = max(idx, 0) + start, min(idx + HORIZON, L) + start
                s = bs - (idx + start)
                e = HORIZON - ((idx + HORIZON + start) - be)
                self.indices.append((bs, be, s, e))
            start = int(end)

    def __len__(self):
        return len(self.indices)

    def sample(self, i: int) -> dict:
        bs, be, s, e = self.indices[i]
        out = {}
        for k, arr in self.data.items():
            # like diffusion_policy's key_first_k: observations copy only their To frames
            n = HORIZON if k == "action" else TO
            x = np.empty((n, *arr.shape[1:]), dtype=arr.dtype)
            seg = arr[bs : min(be, bs + n - s)] if s < n else arr[bs:bs]
            x[:s] = arr[bs]
            x[s : s + len(seg)] = seg
            x[s + len(seg) :] = arr[be - 1]
            out[k] = x
        return out


def run(repeats: int = 5) -> list[dict]:
    rows = []
    for kind, image in (("state", False), ("image", True)):
        buf = _buffer(100, 150, image)
        keys = {"state": "state", **({"image": "img"} if image else {})}
        ds = SequenceDataset(buf, horizon=HORIZON, n_obs_steps=TO, n_action_steps=TA, obs_keys=keys)
        ref = PerSampleSampler(buf, keys)
        assert len(ref) == len(ds)
        rng = np.random.default_rng(0)
        idx = rng.integers(0, len(ds), size=BATCH)

        def per_sample_ref():
            return [ref.sample(int(i)) for i in idx]

        def per_item():
            return [ds[int(i)] for i in idx]

        def batched():
            return ds.get_batch(idx)

        t_ref, _ = median_time(per_sample_ref, repeats)
        for method, fn in (("per-sample python (reference)", None), ("SequenceDataset[i]", per_item),
                           ("SequenceDataset.get_batch", batched)):
            t = t_ref if fn is None else median_time(fn, repeats)[0]
            rows.append({"dataset": kind, "method": method, "windows_per_s": BATCH / t,
                         "speedup_vs_reference": t_ref / t, "windows": len(ds), "batch": BATCH})
    return rows


def main(device: str = "cpu") -> None:
    """Data loading runs on the CPU whatever ``device`` is."""
    rows = run()
    write_result("dataset_windows", rows, ["dataset", "method", "windows_per_s", "speedup_vs_reference"],
                 {"horizon": HORIZON, "n_obs_steps": TO, "n_action_steps": TA,
                  "store": "100 episodes x 150 steps, state [39], action [4], img [84,84,3] uint8, in memory"})


if __name__ == "__main__":
    main()
