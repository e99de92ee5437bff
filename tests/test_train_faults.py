"""Training under faults: resume falls back to the newest complete checkpoint, bad config
values and divergence end with one clear line, a dataset of another task is refused."""
import json
import shutil
import sys

import numpy as np
import pytest

from dp.checkpoint import CheckpointError
from dp.train.cli import main as dp_train
from dp.train.trainer import Trainer
from train_helpers import TINY_DIT, toy_dataset, train_cfg, train_cli_args

DEAD_PID = 4_000_000  # above Linux's pid_max (4194304 is the ceiling; default 32768 or 4194304)


def _losses(run):
    return json.loads((run / "history.json").read_text())["loss"]


def test_resume_falls_back_to_the_newest_complete_checkpoint(tmp_path, capsys):
    data = toy_dataset(tmp_path)
    steps = [*TINY_DIT, "training.steps=80", "training.checkpoint_every=20", "training.keep_checkpoints=5"]
    Trainer(train_cfg(data, tmp_path / "ref", *steps)).run()
    # what a crash can leave: the newest checkpoint gone with `latest` dangling, the one before
    # damaged, and a killed writer's temp directory
    run = tmp_path / "broken"
    shutil.copytree(tmp_path / "ref" / "checkpoints", run / "checkpoints", symlinks=True)
    ckpts = run / "checkpoints"
    shutil.rmtree(ckpts / "step_00000080")
    weights = ckpts / "step_00000060" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    (ckpts / f".step_00000070.tmp-{DEAD_PID}").mkdir()
    capsys.readouterr()
    trainer = Trainer(train_cfg(data, run, *steps, "resume=true"))
    out = capsys.readouterr().out
    assert trainer.step == 40 and f"resumed from {ckpts / 'step_00000040'} at step 40" in out
    assert "skipped" in out and "dangling" in out and "step_00000060" in out
    before = trainer.seconds_before  # the training time of the first 40 steps, from the checkpoint
    assert before > 0
    summary = trainer.run()
    assert summary["total_seconds"] == pytest.approx(before + summary["seconds"], abs=0.05)
    np.testing.assert_allclose(_losses(run), _losses(tmp_path / "ref"), rtol=1e-6, atol=1e-7)
    assert not list(ckpts.glob(".*tmp*"))  # the dead writer's temp directory was removed


def test_resume_refuses_to_start_over_when_no_checkpoint_is_readable(tmp_path):
    data = toy_dataset(tmp_path)
    steps = [*TINY_DIT, "training.steps=20", "training.checkpoint_every=10"]
    run = tmp_path / "run"
    Trainer(train_cfg(data, run, *steps)).run()
    for ckpt in (run / "checkpoints").glob("step_*"):
        (ckpt / "train_state.pt").unlink()
    with pytest.raises(CheckpointError, match="Refusing to start over from step 0: pass resume=false"):
        Trainer(train_cfg(data, run, *steps, "resume=true"))
    assert Trainer(train_cfg(data, run, *steps, "resume=false")).step == 0


def test_a_crash_between_rename_and_link_resumes_from_the_renamed_checkpoint(tmp_path):
    data = toy_dataset(tmp_path)
    steps = [*TINY_DIT, "training.steps=20", "training.checkpoint_every=10"]
    run = tmp_path / "run"
    Trainer(train_cfg(data, run, *steps)).run()
    latest = run / "checkpoints" / "latest"
    latest.unlink()
    latest.symlink_to("step_00000010")  # step_20 was renamed into place, the link not yet replaced
    assert Trainer(train_cfg(data, run, *steps, "training.steps=30", "resume=true")).step == 10


@pytest.mark.parametrize("override,message", [
    ("training.batch_size=0", "training.batch_size: expected an integer >= 1, found 0"),
    ("training.steps=0", "training.steps: expected an integer >= 1, found 0"),
    ("training.checkpoint_every=-1", "training.checkpoint_every: expected an integer >= 0 (0: only at the end), "
                                     "found -1"),
    ("eval.n_envs=0", "eval.n_envs: expected an integer >= 1, found 0"),
    ("+policy.dimm=3", "['dimm'] is not an option of DiTPolicy"),
    ("task=mw_push", "holds demonstrations of ['toy'], but task=mw_push"),  # a toy store under task=mw_push
])
def test_bad_values_end_with_one_line_and_status_2(tmp_path, monkeypatch, capsys, override, message):
    data = toy_dataset(tmp_path)
    args = train_cli_args(data, tmp_path / "run", *TINY_DIT, "training.steps=5")
    args = [a for a in args if not (override.startswith("task=") and a.startswith("task="))] + [override]
    monkeypatch.setattr(sys, "argv", ["dp-train", *args])
    with pytest.raises(SystemExit) as info:
        dp_train()
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_task_mismatch_can_be_allowed(tmp_path):
    data = toy_dataset(tmp_path)
    cfg = train_cfg(data, tmp_path / "run", *TINY_DIT, "task.env=mw_push", "task.allow_mismatch=true")
    assert Trainer(cfg).dataset.attrs["tasks"] == ["toy"]


def test_an_unwritable_output_dir_is_one_line(tmp_path, monkeypatch, capsys):
    data = toy_dataset(tmp_path)
    (tmp_path / "file").write_text("in the way")
    monkeypatch.setattr(sys, "argv", ["dp-train", *train_cli_args(data, tmp_path / "file" / "run", *TINY_DIT,
                                                                  "training.steps=5")])
    with pytest.raises(SystemExit) as info:
        dp_train()
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and "Not a directory" in err[0] and "output_dir" in err[0], err


def test_divergence_stops_with_the_step_and_the_last_finite_checkpoint(tmp_path, monkeypatch, capsys):
    data = toy_dataset(tmp_path)
    run = tmp_path / "run"
    # lr 1e12 after 10 steps at a sane rate: the first checkpoint is finite, then the weights blow up
    args = train_cli_args(data, run, *TINY_DIT, "training.steps=200", "training.checkpoint_every=10",
                          "training.grad_clip=0", "training.warmup_steps=0")
    monkeypatch.setattr(sys, "argv", ["dp-train", *args])
    monkeypatch.setattr("dp.train.trainer.warmup_cosine",
                        lambda opt, warmup, total: __import__("torch").optim.lr_scheduler.LambdaLR(
                            opt, lambda s: 1.0 if s < 10 else 1e12))
    with pytest.raises(SystemExit) as info:
        dp_train()
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1, err
    assert "training diverged at step" in err[0] and "step_00000010" in err[0] and "training.lr" in err[0], err
    latest = (run / "checkpoints" / "latest").resolve()
    assert latest.name == "step_00000010"
    from dp.policies.registry import load_policy

    load_policy(latest)  # finite: loads


def test_the_wandb_run_id_survives_a_resume(tmp_path, monkeypatch):
    data = toy_dataset(tmp_path)
    run = tmp_path / "run"
    monkeypatch.setenv("WANDB_SILENT", "true")
    first = Trainer(train_cfg(data, run, *TINY_DIT, "training.steps=10", "logging.mode=offline"))
    first.run()
    resumed = Trainer(train_cfg(data, run, *TINY_DIT, "training.steps=20", "logging.mode=offline", "resume=true"))
    assert first.wandb_id and resumed.wandb_id == first.wandb_id
    resumed.run()
    assert resumed.wandb_id == first.wandb_id


def test_a_new_run_starts_wandb_without_a_warning(tmp_path, capfd):
    """wandb.init on a run directory not made yet warned "git root <dir> does not exist"; the trainer makes it first."""
    data = toy_dataset(tmp_path)
    Trainer(train_cfg(data, tmp_path / "runs" / "run", *TINY_DIT, "training.steps=2", "logging.mode=offline")).run()
    assert "does not exist" not in capfd.readouterr().err
