import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dp.data import DatasetError
from dp.policies import Policy
from dp.train.trainer import Trainer
from train_helpers import TINY_DIT, toy_dataset, train_cfg, train_cli_args

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_training_reduces_loss_and_checkpoint_roundtrips(tmp_path, capsys):
    data = toy_dataset(tmp_path)
    cfg = train_cfg(data, tmp_path / "run", *TINY_DIT, "training.steps=60", "training.checkpoint_every=30",
                    "training.val_ratio=0.1", "training.val_every=30")
    summary = Trainer(cfg).run()
    # progress=false (no bar): a log gets one line per checkpoint instead
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step ")]
    assert [ln.split(":")[0] for ln in lines] == ["step 30/60", "step 60/60"], lines
    assert "steps/s; saved" in lines[0] and "step_00000030" in lines[0]
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert np.mean(hist["loss"][-10:]) < 0.6 * np.mean(hist["loss"][:5])
    assert len(hist["val_loss"]) == 2
    ckpt = Path(summary["checkpoint"])
    assert {"weights.safetensors", "ema.safetensors", "config.yaml", "train_state.pt", "meta.json"} <= {
        p.name for p in ckpt.iterdir()}
    assert (tmp_path / "run" / "checkpoints" / "latest").resolve() == ckpt
    assert (tmp_path / "run" / "training_curve.png").stat().st_size > 1000
    assert not list((tmp_path / "run" / "checkpoints").glob(".*tmp*"))
    policy = Policy.from_checkpoint(tmp_path / "run")
    obs = {"state": torch.zeros(3, 2, 4)}
    a = policy.predict_action(obs)
    assert a.shape == (3, 8, 2) and torch.isfinite(a).all()
    # env units: the normalizer travelled in the checkpoint
    lo, hi = policy.normalizer.params["action"].min, policy.normalizer.params["action"].max
    assert (a >= lo - 0.05).all() and (a <= hi + 0.05).all()


def _losses(run: Path) -> list[float]:
    return json.loads((run / "history.json").read_text())["loss"]


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    data = toy_dataset(tmp_path)
    steps = ["training.steps=400", "training.checkpoint_every=50", *TINY_DIT]
    Trainer(train_cfg(data, tmp_path / "ref", *steps)).run()

    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "dp.train.cli", *train_cli_args(data, run, *steps)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "step_00000100").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed; raise training.steps"
    assert not (run / "history.json").exists()
    done = subprocess.run(cmd + ["resume=true"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in done.stdout
    ref, resumed = _losses(tmp_path / "ref"), _losses(run)
    assert len(ref) == len(resumed) == 400
    np.testing.assert_allclose(resumed, ref, rtol=1e-6, atol=1e-7)


def test_sigint_saves_a_checkpoint_and_exits(tmp_path):
    data = toy_dataset(tmp_path)
    run = tmp_path / "int"
    cmd = [sys.executable, "-m", "dp.train.cli", *train_cli_args(data, run, "training.steps=100000",
                                                                   "training.checkpoint_every=0", *TINY_DIT)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(8)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "resume=true" in err
    latest = (run / "checkpoints" / "latest").resolve()
    step = json.loads((latest / "meta.json").read_text())["step"]
    assert step > 0


def test_missing_dataset_names_the_collect_command(tmp_path):
    cfg = train_cfg(tmp_path / "nope.zarr", tmp_path / "run", *TINY_DIT)
    with pytest.raises(DatasetError, match=r"dp-collect task=toy n_episodes=100 obs=state output=.*nope.zarr"):
        Trainer(cfg)


def test_bad_config_values_fail_clearly(tmp_path):
    data = toy_dataset(tmp_path)
    with pytest.raises(ValueError, match="n_action_steps"):
        Trainer(train_cfg(data, tmp_path / "r1", *TINY_DIT, "policy.n_action_steps=20"))
    with pytest.raises(ValueError, match="CUDA is not available"):
        if torch.cuda.is_available():
            raise ValueError("CUDA is not available (skipped: this machine has CUDA)")
        Trainer(train_cfg(data, tmp_path / "r2", *TINY_DIT, "device=cuda"))
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(train_cfg(data, tmp_path / "r3", *TINY_DIT, "training.batch_size=100000"))


def test_ddp_two_processes_gloo(tmp_path):
    data = toy_dataset(tmp_path)
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "-m", "dp.train.cli", *train_cli_args(data, run, "training.steps=30", "training.checkpoint_every=0",
                                                 *TINY_DIT)]
    done = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stdout
    hist = _losses(run)
    assert len(hist) == 30 and np.mean(hist[-5:]) < np.mean(hist[:5])
    assert Policy.from_checkpoint(run).predict_action({"state": torch.zeros(1, 2, 4)}).shape == (1, 8, 2)


class TinyRegressor(torch.nn.Module):
    """Not a Policy: a linear map from the last state to the action chunk. What the Trainer needs
    of a model is ``compute_loss(batch) -> {"loss": ...}`` and a constructor taking shape_meta."""

    def __init__(self, shape_meta: dict, horizon: int = 8, n_obs_steps: int = 2, n_action_steps: int = 4):
        super().__init__()
        self.net = torch.nn.Linear(shape_meta["obs"]["state"][0], horizon * shape_meta["action"][0])

    def compute_loss(self, batch: dict) -> dict:
        pred = self.net(batch["obs"]["state"][:, -1]).view(batch["action"].shape)
        return {"loss": torch.nn.functional.mse_loss(pred, batch["action"])}


def test_the_trainer_trains_any_module_with_compute_loss(tmp_path):
    from omegaconf import OmegaConf

    from dp.policies.registry import register_policy

    register_policy(TinyRegressor)
    cfg = train_cfg(toy_dataset(tmp_path), tmp_path / "run", "training.steps=200", "training.checkpoint_every=100")
    OmegaConf.set_struct(cfg, False)
    cfg.policy = {"_target_": f"{TinyRegressor.__module__}.TinyRegressor", "horizon": 8, "n_obs_steps": 2,
                  "n_action_steps": 4}
    trainer = Trainer(cfg)
    assert type(trainer.policy) is TinyRegressor
    trainer.run()
    losses = _losses(tmp_path / "run")
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5])
    assert (tmp_path / "run" / "checkpoints" / "step_00000200" / "weights.safetensors").exists()
