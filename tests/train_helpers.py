"""Tiny configs for training tests: real code paths, small sizes."""
from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

from dp.collect import collect
from dp.constants import CONFIG_DIR

TINY_DIT = ["policy.dim=32", "policy.depth=2", "policy.heads=2", "policy.horizon=8", "policy.n_action_steps=4"]


def toy_dataset(tmp_path: Path, n_episodes: int = 30, obs: str = "state") -> Path:
    out = tmp_path / f"toy_{obs}_{n_episodes}.zarr"
    if not out.exists():
        collect({
            "task": {"name": "toy", "env": "toy", "env_options": {}},
            "n_episodes": n_episodes, "obs": obs, "image_size": 32 if obs == "image" else None,
            "output": str(out), "seed": 0, "keep_failed": False, "max_attempts_factor": 2,
            "overwrite": False, "progress": False,
        })
    return out


def train_cfg(dataset: Path, output_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose("train", overrides=[
            "task=toy", f"task.dataset_path={dataset}", f"output_dir={output_dir}", "logging.mode=disabled",
            "progress=false", "training.batch_size=16", "training.warmup_steps=5", "training.val_every=0",
            "training.log_every=1", "training.lr=2e-3", *overrides,
        ])


def train_cli_args(dataset: Path, output_dir: Path, *overrides: str) -> list[str]:
    return ["task=toy", f"task.dataset_path={dataset}", f"output_dir={output_dir}", "logging.mode=disabled",
            "progress=false", "training.batch_size=16", "training.warmup_steps=5", "training.val_every=0",
            "training.log_every=1", "training.lr=2e-3", *overrides]


def tiny_checkpoint(run: Path, policy=None, step: int = 1, eval_recipe: dict | None = None) -> Path:
    """A checkpoint of an untrained tiny DiT for the toy task under ``run/checkpoints``, as dp-train writes it
    (its task config with ``eval_recipe`` when given)."""
    import numpy as np
    import torch

    from dp.data import Normalizer
    from dp.policies import DiTPolicy
    from dp.checkpoint import save_checkpoint

    if policy is None:
        torch.manual_seed(0)
        policy = DiTPolicy({"action": [2], "obs": {"state": [4]}}, horizon=8, n_action_steps=4, dim=32, depth=1,
                           heads=2)
        rng = np.random.default_rng(0)
        policy.set_normalizer(Normalizer.fit({"action": rng.normal(size=(200, 2)), "state": rng.normal(size=(200, 4))}))
    task = {"name": "toy", "env": "toy", "env_options": {}, **({"eval_recipe": eval_recipe} if eval_recipe else {})}
    config = {"policy": policy.config, "task": task,
              "dataset_attrs": {"tasks": ["toy"], "env_options": {"obs": "state"}}}
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return save_checkpoint(Path(run) / "checkpoints", step, policy, None, optimizer, scheduler, config, {})


def rewrite_checkpoint_file(ckpt: Path, name: str, data: bytes) -> None:
    """Replace one file of a checkpoint and update its size and sha256 in meta.json, as a
    crafted (not merely damaged) checkpoint would."""
    import hashlib
    import json

    (ckpt / name).write_bytes(data)
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / "meta.json").write_text(json.dumps(meta))
