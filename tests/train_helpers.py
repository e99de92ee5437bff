"""Tiny configs for training tests: real code paths, small sizes."""
from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

from dp.collect import CONFIG_DIR, collect

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
