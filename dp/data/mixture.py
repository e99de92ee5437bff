"""Dataset mixtures in the unified space: several stores, each with its embodiment and a sampling
weight, read as one dataset of RDT-style samples.

    sources = [{"path": "data/rs_lift_panda.zarr", "embodiment": "panda", "weight": 1.0},
               {"path": "data/rs_two_arm_lift.zarr", "embodiment": "two_arm_panda", "weight": 2.0}]
    data = MixtureDataset(sources, horizon=16, n_obs_steps=2, n_action_steps=8)
    batch = data.get_batch(np.arange(8))

A sample (numpy, unnormalized; the policy normalizes per embodiment with ``fit_normalizer``)::

    {"obs": {"state":  float32 [To, 128]  unified robot state (dp/data/unified.py),
             "object": float32 [To, O]    the store's non-robot state (state[..., P:]), zero-padded to O},
     "action": float32 [H, 128]            unified actions,
     "state_mask": bool [128], "action_mask": bool [128], "object_mask": bool [O],
     "embodiment": int64 []                index into ``embodiments``,
     "source": int64 []                    index into ``sources``,
     "control_hz": float32 [],
     "pad_mask": {...}                     as SequenceDataset's}

Sampling: the mixture is a virtual index of ``len(self)`` windows in which source i holds a share
proportional to its weight (its windows repeated, or a prefix of a fixed permutation of them), so
any sampler over ``range(len(self))`` (dp's StepBatches included) draws the sources at their
weights and resumes exactly.

Normalization (``fit_normalizer``): one set of statistics per embodiment for ``state`` and
``action`` and ``object`` (keys ``state__<embodiment>``, ``action__<embodiment>``,
``object__<embodiment>``), so a deployed policy needs to know only its robot. Two sources of one
embodiment with different object layouts (two tasks) share the object statistics.
"""
from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence

import numpy as np

from dp.data.errors import DatasetError
from dp.data.normalizer import Normalizer
from dp.data.replay_buffer import ReplayBuffer
from dp.data.sequence import SequenceDataset
from dp.data.unified import UNIFIED_DIM, embodiment


def check_sources(sources) -> list[dict]:
    """``[{path, embodiment, weight}]`` checked: a list of mappings with a path, a known embodiment
    and a positive finite weight (default 1)."""
    if not isinstance(sources, Sequence) or isinstance(sources, (str, bytes)) or not sources:
        raise DatasetError(f"task.datasets must be a non-empty list of {{path, embodiment, weight}}, got {sources!r}.")
    out = []
    for i, s in enumerate(sources):
        if not isinstance(s, Mapping) or "path" not in s or "embodiment" not in s:
            raise DatasetError(f"task.datasets[{i}] must have 'path' and 'embodiment' (and optionally 'weight'), "
                               f"got {s!r}.")
        unknown = sorted(set(s) - {"path", "embodiment", "weight", "name"})
        if unknown:
            raise DatasetError(f"task.datasets[{i}] has unknown key(s) {unknown}; allowed: path, embodiment, "
                               "weight, name.")
        w = s.get("weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not np.isfinite(w) or w <= 0:
            raise DatasetError(f"task.datasets[{i}] ({s['path']}): weight must be a positive number, got {w!r}. "
                               "Weights are relative sampling rates; drop a source instead of weighting it 0.")
        embodiment(s["embodiment"])  # raises for an unknown name
        out.append({"path": str(s["path"]), "embodiment": str(s["embodiment"]), "weight": float(w),
                    "name": str(s.get("name") or os.path.splitext(os.path.basename(str(s["path"])))[0])})
    names = [s["name"] for s in out]
    if len(set(names)) != len(names):
        raise DatasetError(f"task.datasets: source names {names} repeat; give each a distinct 'name'.")
    return out


class MixtureDataset:
    """Stores of several embodiments as one dataset of unified samples (see the module docstring).

    Args:
        sources: ``[{path, embodiment, weight, name?}]``.
        object_dim: O, the padded width of the non-robot state (None: the widest source's).
        cameras: batch obs name -> store key(s) read from every source as they are (e.g.
            ``{"image": ["img", "robot0_eye_in_hand_image"]}``); every source must have them.
        horizon, n_obs_steps, n_action_steps, val_ratio, seed, max_train_episodes: as SequenceDataset.
    """

    def __init__(self, sources, horizon: int = 16, n_obs_steps: int = 2, n_action_steps: int = 8,
                 object_dim: int | None = None, cameras: Mapping[str, str | list[str]] | None = None,
                 val_ratio: float = 0.0, seed: int = 42, max_train_episodes: int | None = None):
        self.sources = check_sources(sources)
        self.embodiments = list(dict.fromkeys(s["embodiment"] for s in self.sources))
        self.cameras = dict(cameras or {})
        self.horizon, self.n_obs_steps, self.n_action_steps = horizon, n_obs_steps, n_action_steps
        self.datasets: list[SequenceDataset] = []
        for s in self.sources:
            emb = embodiment(s["embodiment"])
            obs_keys = {"agent_pos": "agent_pos", "state": "state", **self.cameras}
            if emb.joint_dim:
                obs_keys["joint_pos"] = "joint_pos"
            buffer = ReplayBuffer.open(s["path"])
            emb.check_shapes({k: tuple(buffer[k].shape[1:]) for k in buffer.keys()}, s["path"])
            ds = SequenceDataset(buffer, horizon=horizon, n_obs_steps=n_obs_steps, n_action_steps=n_action_steps,
                                 obs_keys=obs_keys, val_ratio=val_ratio, seed=seed,
                                 max_train_episodes=max_train_episodes)
            recorded = ds.attrs.get("embodiment")
            if recorded and recorded != s["embodiment"]:
                raise DatasetError(f"{s['path']} was collected with embodiment {recorded!r} (its attrs say so), but "
                                   f"task.datasets gives it {s['embodiment']!r}. Give it {recorded!r}.")
            self.datasets.append(ds)
        self.object_dims = [d.sample_shapes()["obs"]["state"][0] - embodiment(s["embodiment"]).agent_pos_dim
                            for d, s in zip(self.datasets, self.sources)]
        widest = max(self.object_dims)
        self.object_dim = widest if object_dim is None else int(object_dim)
        if self.object_dim < widest:
            raise DatasetError(f"object_dim {self.object_dim} is narrower than source "
                               f"{self.sources[int(np.argmax(self.object_dims))]['name']}'s {widest} object numbers; "
                               f"raise it to at least {widest}.")
        self._masks = [(embodiment(s["embodiment"]).state_mask(), embodiment(s["embodiment"]).action_mask(),
                        np.arange(self.object_dim) < n) for s, n in zip(self.sources, self.object_dims)]
        per_source = [list(d.attrs.get("instructions") or []) for d in self.datasets]
        missing = [s["path"] for s, texts in zip(self.sources, per_source) if not texts]
        if missing:
            raise DatasetError(f"{missing} record no task instructions (attrs['instructions']); a mixture needs them "
                               "to tell its tasks apart. Collect with dp-collect, which records them.")
        self._instruction_offsets = np.cumsum([0] + [len(t) for t in per_source])[:-1]
        self.attrs = {"tasks": [t for d in self.datasets for t in (d.attrs.get("tasks") or [])],
                      "instructions": [t for texts in per_source for t in texts],
                      # what an evaluation rolls out per source: its tasks, env options and robot
                      "sources": [{**s, "tasks": list(d.attrs.get("tasks") or [d.attrs.get("task")]),
                                   "env_options": dict(d.attrs.get("env_options") or {})}
                                  for s, d in zip(self.sources, self.datasets)],
                      "seeds": [x for d in self.datasets for x in (d.attrs.get("seeds") or [])]}
        self._build_index()

    # -------------------------------------------------------------- index
    def _build_index(self, validation: bool = False) -> None:
        lengths = np.array([len(d) for d in self.datasets])
        empty = [s["path"] for s, n in zip(self.sources, lengths) if n == 0]
        if empty and not validation:
            raise DatasetError(f"{empty} give no training windows (too few or too short episodes for horizon "
                               f"{self.horizon}); collect more episodes or drop them from task.datasets.")
        w = np.array([s["weight"] for s in self.sources]) * (lengths > 0)  # a validation split may lack a source
        total = int(lengths.sum())
        self.shares = np.zeros(len(w), np.int64) if total == 0 else \
            np.where(lengths > 0, np.maximum(1, np.round(w / w.sum() * total)), 0).astype(np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.shares)])
        rng = np.random.default_rng(self.datasets[0].seed)
        # share slot j of source i -> window order[j % len]: every window before any repeats
        self._orders = [rng.permutation(n) for n in lengths]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, idx) -> tuple[np.ndarray, np.ndarray]:
        """Mixture indices [B] -> (source [B], window within that source's dataset [B])."""
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"mixture index out of range [0, {len(self)}).")
        src = np.searchsorted(self.offsets, idx, side="right") - 1
        win = np.empty_like(idx)
        for i in np.unique(src):
            sel = src == i
            j = idx[sel] - self.offsets[i]
            win[sel] = self._orders[i][j % len(self._orders[i])]
        return src, win

    def get_validation_dataset(self) -> "MixtureDataset":
        val = object.__new__(MixtureDataset)
        val.__dict__.update(self.__dict__)
        val.datasets = [d.get_validation_dataset() for d in self.datasets]
        val._build_index(validation=True)
        return val

    # -------------------------------------------------------------- samples
    def _unified(self, i: int, batch: dict) -> dict:
        emb = embodiment(self.sources[i]["embodiment"])
        obs = batch["obs"]
        n = len(batch["action"])
        state = emb.state_to_unified(obs).astype(np.float32)  # [B, To, 128]
        obj = np.zeros((*obs["state"].shape[:-1], self.object_dim), np.float32)
        obj[..., : self.object_dims[i]] = obs["state"][..., emb.agent_pos_dim:]
        s_mask, a_mask, o_mask = self._masks[i]
        out = {
            "obs": {"state": state, "object": obj, **{k: obs[k] for k in self.cameras}},
            "action": emb.action_to_unified(batch["action"]).astype(np.float32),
            "state_mask": np.tile(s_mask, (n, 1)),
            "action_mask": np.tile(a_mask, (n, 1)),
            "object_mask": np.tile(o_mask, (n, 1)),
            "embodiment": np.full(n, self.embodiments.index(emb.name), np.int64),
            "source": np.full(n, i, np.int64),
            "control_hz": np.full(n, emb.control_hz, np.float32),
            "pad_mask": {"state": batch["pad_mask"]["agent_pos"], "object": batch["pad_mask"]["state"],
                         "action": batch["pad_mask"]["action"], **{k: batch["pad_mask"][k] for k in self.cameras}},
        }
        # an index into attrs["instructions"], which lists every source's instructions in order
        out["task_id"] = self._instruction_offsets[i] + batch.get("task_id", np.zeros(n, np.int64))
        return out

    def get_batch(self, idx) -> dict:
        """Mixture windows ``idx`` [B] -> a batch of unified samples, in the order of ``idx``."""
        src, win = self.locate(idx)
        parts, where = [], []
        for i in np.unique(src):
            sel = np.nonzero(src == i)[0]
            parts.append(self._unified(int(i), self.datasets[i].get_batch(win[sel])))
            where.append(sel)
        order = np.argsort(np.concatenate(where), kind="stable")
        return _take(_concat(parts), order)

    def __getitem__(self, i: int) -> dict:
        return _take(self.get_batch(np.array([i])), 0)

    def __getitems__(self, indices: list[int]) -> dict:
        return self.get_batch(np.asarray(indices))

    def sample_shapes(self) -> dict:
        cams = {k: self.datasets[0].sample_shapes()["obs"][k] for k in self.cameras}
        return {"obs": {"state": [UNIFIED_DIM], "object": [self.object_dim], **cams}, "action": [UNIFIED_DIM],
                "embodiments": list(self.embodiments), "sources": [s["name"] for s in self.sources]}

    # -------------------------------------------------------------- normalization
    def fit_normalizer(self, mode: str = "limits") -> Normalizer:
        """Statistics per embodiment (state, action, object), over each split's steps; slots
        outside a mask are 0 and stay 0."""
        arrays: dict[str, list[np.ndarray]] = {}
        for i, (d, s) in enumerate(zip(self.datasets, self.sources)):
            emb = embodiment(s["embodiment"])
            steps = np.concatenate([np.arange(a, b) for a, b, m in
                                    zip(d._episode_starts(), d.buffer.episode_ends, d.episode_mask) if m])
            data = d.buffer.data
            obs = {"agent_pos": data["agent_pos"][steps]}
            if emb.joint_dim:
                obs["joint_pos"] = data["joint_pos"][steps]
            arrays.setdefault(f"state__{emb.name}", []).append(emb.state_to_unified(obs))
            arrays.setdefault(f"action__{emb.name}", []).append(emb.action_to_unified(data["action"][steps]))
            obj = np.zeros((len(steps), self.object_dim))
            obj[:, : self.object_dims[i]] = data["state"][steps][:, emb.agent_pos_dim:]
            arrays.setdefault(f"object__{emb.name}", []).append(obj)
        return Normalizer.fit({k: np.concatenate(v) for k, v in arrays.items()}, mode=mode)


def _concat(parts: list[dict]) -> dict:
    if isinstance(parts[0], dict):
        return {k: _concat([p[k] for p in parts]) for k in parts[0]}
    return np.concatenate(parts)


def _take(tree, index):
    if isinstance(tree, dict):
        return {k: _take(v, index) for k, v in tree.items()}
    return tree[index]
