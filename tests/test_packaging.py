"""dp installs like a library: a wheel carries its configs, so the CLIs run outside the checkout."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_an_installed_wheel_runs_dp_train_from_another_directory(tmp_path):
    src = tmp_path / "src"  # build from a copy: setuptools writes build/ beside the sources
    shutil.copytree(ROOT / "dp", src / "dp", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("dp-*.whl"))
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(next(n for n in z.namelist() if n.endswith("METADATA"))).decode()
    extras = {line.split(": ", 1)[1] for line in metadata.splitlines() if line.startswith("Provides-Extra: ")}
    assert {"robosuite", "metaworld", "pusht", "language", "wandb", "lerobot", "test", "all"} <= extras
    assert "Requires-Dist: torch>=2.6" in metadata and "Requires-Dist: mujoco==3.3.0; extra == \"robosuite\"" in metadata
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import dp, dp.constants as c; print(dp.__file__); print(c.CONFIG_DIR)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(p).is_relative_to(site) for p in where), where  # the wheel's dp, not the checkout's
    job = subprocess.run([str(site / "bin" / "dp-train"), "--cfg", "job", "--resolve", "task=toy", "policy=mlp_bc"], cwd=elsewhere,
                         env=env, capture_output=True, text=True, timeout=120)
    assert job.returncode == 0, job.stderr[-2000:]
    assert "output_dir: runs/toy_mlp_bc" in job.stdout and "steps: 5000" in job.stdout
    assert not (elsewhere / "runs").exists() and not (elsewhere / "multirun").exists()


def test_training_without_wandb_logs_to_history_only(tmp_path, monkeypatch, capsys):
    """wandb is an extra: without it, training runs and says where its metrics went; online logging refuses."""
    import pytest

    from dp.errors import ConfigError
    from dp.train.trainer import Trainer
    from train_helpers import TINY_DIT, toy_dataset, train_cfg

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError, as when not installed
    data = toy_dataset(tmp_path)
    summary = Trainer(train_cfg(data, tmp_path / "run", *TINY_DIT, "training.steps=2", "logging.mode=offline")).run()
    assert summary["steps"] == 2 and (tmp_path / "run" / "history.json").is_file()
    assert "wandb is not installed" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="logging.mode=online needs wandb"):
        Trainer(train_cfg(data, tmp_path / "run2", *TINY_DIT, "training.steps=2", "logging.mode=online")).run()
