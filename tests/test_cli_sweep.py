"""Hydra conventions users expect: sweeps (-m) write one output per job, --help says what a command does."""
import re
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dp.constants import CONFIG_DIR
from dp.sweep import job_output, swept_keys
from train_helpers import TINY_DIT, toy_dataset, train_cli_args

CLIS = {"train": "dp.train.cli", "collect": "dp.collect", "eval": "dp.eval.cli", "control": "dp.control.cli",
        "export": "dp.deploy.cli", "video_eval": "dp.video.cli"}


def test_only_swept_keys_name_a_job():
    assert swept_keys(["seed=0,1", "task=toy", "training.lr=range(1,3)", "-m"]) == {"seed", "training.lr"}
    assert job_output("runs/toy_dit") == "runs/toy_dit"  # outside a multirun: as configured


def test_a_collect_sweep_writes_one_store_per_job(tmp_path):
    out = tmp_path / "toy.zarr"
    done = subprocess.run([sys.executable, "-m", "dp.collect", "-m", "seed=0,7", "task=toy", "n_episodes=2",
                           f"output={out}", "progress=false"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "toy_seed-0.zarr").is_dir() and (tmp_path / "toy_seed-7.zarr").is_dir() and not out.exists()
    assert (tmp_path / "multirun").is_dir()  # hydra's sweep record (git-ignored), not a job's output


def test_a_train_sweep_writes_one_run_per_job(tmp_path):
    data = toy_dataset(tmp_path)
    run = tmp_path / "run"
    args = train_cli_args(data, run, *TINY_DIT, "training.steps=2", "training.checkpoint_every=0")
    done = subprocess.run([sys.executable, "-m", "dp.train.cli", "-m", "seed=0,1", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for seed in (0, 1):
        assert (tmp_path / f"run_seed-{seed}" / "checkpoints" / "latest" / "weights.safetensors").is_file()
    assert not run.exists()


@pytest.mark.parametrize("name", sorted(CLIS))
def test_help_says_what_the_command_does_and_names_real_keys(name):
    done = subprocess.run([sys.executable, "-m", CLIS[name], "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout
    assert text.startswith(f"dp-{name.replace('_', '-')}: ") and "Main keys" in text and "Powered by Hydra" not in text
    keys = re.findall(r"^  ([\w.]+)=", text.split("Main keys", 1)[1].split("Config groups", 1)[0], re.M)
    assert len(keys) >= 4
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(name, overrides=["task=toy"] if name in ("train", "collect") else [])
    groups = {"task", "policy", "robot"}
    def has(key: str) -> bool:
        node = OmegaConf.to_container(cfg)
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    missing = [k for k in keys if k not in groups and not has(k)]
    assert not missing, f"dp-{name} --help names keys its config lacks: {missing}"
