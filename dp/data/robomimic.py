"""Import robomimic hdf5 demonstrations into dp's zarr layout.

robomimic layout (how most public robosuite demonstrations ship)::

    data/                      attrs: env_args (json), total
      demo_<N>/actions         [T, A]
      demo_<N>/obs/<key>       [T, ...]   low-dim vectors and uint8 camera images

Output: ``data/action`` and every obs key once, under its robomimic name (cameras too:
``data/agentview_image``, ``data/robot0_eye_in_hand_image``; a policy maps them with
``task.obs_keys``, e.g. ``{image: agentview_image, agent_pos: agent_pos}``). ``data/agent_pos`` is
written when the file has the robots' ``robot{i}_eef_pos``, ``_eef_quat`` and ``_gripper_qpos``: their
concatenation, the proprioception dp's robosuite tasks observe as ``agent_pos``. With ``state_keys``
also ``data/state`` (those keys concatenated, float32). Demos are written in numeric order (demo_2
before demo_10).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from dp.data.atomic import atomic_store
from dp.data.errors import DatasetError
from dp.data.replay_buffer import ReplayBuffer
from dp.data.validate import validate


def _demo_number(name: str) -> int:
    m = re.fullmatch(r"demo_(\d+)", name)
    if m is None:
        raise DatasetError(f"Unexpected group data/{name} in robomimic file; expected demo_<N>.")
    return int(m.group(1))


def proprio_keys(obs: dict) -> list[str]:
    """robomimic's proprioception keys, robot by robot, in dp's ``agent_pos`` order (empty when robot0's
    eef pose or gripper is absent)."""
    keys = []
    for i in range(8):
        arm = [f"robot{i}_eef_pos", f"robot{i}_eef_quat", f"robot{i}_gripper_qpos"]
        if not all(k in obs for k in arm):
            break
        keys += arm
    return keys


def import_robomimic(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    state_keys: list[str] | None = None,
    overwrite: bool = False,
) -> ReplayBuffer:
    import h5py

    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise DatasetError(f"No robomimic file at {src}.")
    with h5py.File(src, "r") as f:
        if "data" not in f:
            raise DatasetError(f"{src}: no 'data' group; expected robomimic's data/demo_N/{{actions,obs/...}}.")
        demos = sorted(f["data"].keys(), key=_demo_number)
        if not demos:
            raise DatasetError(f"{src}: 'data' has no demo_N groups.")
        with atomic_store(dst, overwrite=overwrite) as tmp:
            out = ReplayBuffer.create(tmp)
            for name in demos:
                demo = f["data"][name]
                for part in ("actions", "obs"):
                    if part not in demo:
                        raise DatasetError(f"{src}: data/{name} has no '{part}'; it has {sorted(demo.keys())}.")
                obs = {k: np.asarray(demo["obs"][k]) for k in demo["obs"].keys()}
                episode = {"action": np.asarray(demo["actions"], dtype=np.float32), **obs}
                if state_keys:
                    missing = [k for k in state_keys if k not in obs]
                    if missing:
                        raise DatasetError(f"{src}: data/{name}/obs lacks {missing}; it has {sorted(obs)}.")
                    episode["state"] = np.concatenate(
                        [obs[k].reshape(len(obs[k]), -1).astype(np.float32) for k in state_keys], axis=1
                    )
                proprio = proprio_keys(obs)
                if proprio:
                    episode["agent_pos"] = np.concatenate([obs[k].astype(np.float32) for k in proprio], axis=1)
                out.add_episode(episode)
            env_args = f["data"].attrs.get("env_args")
            out.attrs.update(
                {
                    "source": "robomimic",
                    "source_file": str(src),
                    "demos": demos,
                    "env_args": json.loads(env_args) if isinstance(env_args, (str, bytes)) else None,
                    "state_keys": list(state_keys or []),
                    "agent_pos_keys": proprio_keys(obs),
                    "cameras": sorted(k for k, v in obs.items() if v.ndim == 4),
                }
            )
            validate(out)
    return ReplayBuffer.open(dst)
