"""dp-control: the fixed-rate loop on the toy task with a tiny untrained DiT policy.

Timing on a loaded 2-core machine is not reproducible, so the assertions are about logic:
counts that follow from stall injection, one CSV row per tick, limits, stop reasons.
"""
import csv
import json
import signal
import sys
import threading
import time

import numpy as np
import pytest
import torch

from dp.control import ActionQueue, ControlLoop, LoopConfig, SimRobot
from dp.control.cli import control_checkpoint, main as dp_control
from dp.control.telemetry import COLUMNS
from dp.data import Normalizer
from dp.policies import DiTPolicy

SHAPE_META = {"action": [2], "obs": {"state": [4]}}
SUMMARY_KEYS = {"ticks", "deadline_misses", "consecutive_miss_stop", "jitter_ms_p50", "jitter_ms_p99",
                "inference_ms_p50", "inference_ms_p99", "episodes", "successes", "success_rate", "mode", "hz",
                "machine", "holds", "skipped", "stop_reason", "stalls_injected", "clipped_actions"}
EPISODE_STEPS = 30


def tiny_policy(**kw) -> DiTPolicy:
    """Untrained; its normalizer spans 3x the toy's action limits, so raw actions often leave them."""
    torch.manual_seed(0)
    kw = {"horizon": 8, "n_action_steps": 4, **kw}
    policy = DiTPolicy(SHAPE_META, dim=32, depth=1, heads=2, **kw)
    rng = np.random.default_rng(0)
    policy.set_normalizer(Normalizer.fit({"action": 3 * rng.normal(size=(200, 2)), "state": rng.normal(size=(200, 4))}))
    return policy.eval()


class RecordingRobot(SimRobot):
    """The toy task, remembering every action ``act`` receives."""

    def __init__(self):
        super().__init__("toy", {"max_episode_steps": EPISODE_STEPS})
        self.sent: list[np.ndarray] = []

    def act(self, action):
        self.sent.append(np.array(action))
        super().act(action)


def run(tmp_path, policy=None, **cfg):
    cfg = {"hz": 50, "max_ticks": 100, "torch_threads": 1, "max_consecutive_misses": 0, **cfg}
    robot = RecordingRobot()
    summary = ControlLoop(policy or tiny_policy(), robot, LoopConfig(**cfg), tmp_path).run()
    with open(tmp_path / "ticks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    return summary, rows, robot


def check_log(summary, rows, robot):
    """What holds for every run: one complete row per tick, misses counted, limits kept."""
    assert summary["ticks"] == len(rows)
    assert [int(r["tick"]) for r in rows] == list(range(len(rows)))
    assert all(list(r) == list(COLUMNS) and None not in r.values() for r in rows)
    assert summary["deadline_misses"] == sum(r["deadline_met"] == "false" for r in rows)
    assert all(r["deadline_met"] == "false" for r in rows if r["source"] != "policy")
    assert summary["holds"] == sum(r["source"] == "hold" for r in rows)
    # every tick that ran sent exactly one action, inside the limits
    assert len(robot.sent) == sum(r["source"] != "skip" for r in rows)
    low, high = robot.action_limits
    assert all(((a >= low) & (a <= high)).all() for a in robot.sent)
    # ticks.csv records exactly what was sent
    logged = [np.array(r["action"].split(), np.float32) for r in rows if r["source"] != "skip"]
    np.testing.assert_allclose(np.stack(logged), np.stack(robot.sent), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode,blend", [("sync", "committed"), ("async", "committed"), ("async", "ensemble")])
def test_loop_runs_and_logs_every_tick(tmp_path, mode, blend):
    summary, rows, robot = run(tmp_path, mode=mode, async_blend=blend)
    check_log(summary, rows, robot)
    assert len(rows) == 100 and summary["stop_reason"] == "max_ticks"
    assert SUMMARY_KEYS <= set(summary)
    assert summary["mode"] == mode and summary["hz"] == 50
    assert summary["async_blend"] == (blend if mode == "async" else None)  # DiTPolicy takes `committed`
    assert {"cpu", "cores", "torch"} <= set(summary["machine"])
    assert summary["predictions"] >= 1 and sum(r["source"] == "policy" for r in rows) >= 1
    assert summary["clipped_actions"] >= 1  # the normalizer is wider than the limits: clipping was exercised
    # episodes are at most EPISODE_STEPS steps; each row names its episode
    steps = len(robot.sent)
    assert summary["episodes"] == len(robot.results) >= steps // EPISODE_STEPS
    assert max(int(r["episode"]) for r in rows) in (summary["episodes"] - 1, summary["episodes"])
    assert summary["successes"] == sum(e["success"] for e in robot.results)
    assert [e["seed"] for e in robot.results] == [1_000_000_000 + i for i in range(summary["episodes"])]
    assert (tmp_path / "latency_hist.png").stat().st_size > 0
    # every episode that began got its first chunk before its first tick (the last one may not have begun)
    assert summary["episode_start_waits"] in (summary["episodes"], summary["episodes"] + 1)
    first_ticks = [r for prev, r in zip([None] + rows, rows) if prev is None or prev["episode"] != r["episode"]]
    assert all(r["source"] == "policy" for r in first_ticks)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_stalls_are_held_with_the_safe_action_and_logged_as_misses(tmp_path, mode):
    # every 2nd prediction takes 0.15 s: longer than the 4 planned actions of a chunk last at 50 Hz
    summary, rows, robot = run(tmp_path, mode=mode, stall={"every": 2, "seconds": 0.15}, safe_action=[0.0, 0.0])
    check_log(summary, rows, robot)
    assert len(rows) == 100 and summary["stop_reason"] == "max_ticks"
    assert summary["stalls_injected"] >= 2
    holds = [r for r in rows if r["source"] == "hold"]
    # each stalled prediction leaves ticks with nothing fresh (the last one may still run at the end)
    assert len(holds) >= summary["stalls_injected"] - 1 >= 1
    assert all(r["deadline_met"] == "false" and r["obs_age_ms"] == "" for r in holds)
    ran = [r for r in rows if r["source"] != "skip"]
    assert all((a == 0).all() for r, a in zip(ran, robot.sent) if r["source"] == "hold")


def test_consecutive_misses_stop_the_loop(tmp_path):
    # every prediction stalls 30 s; closing the worker cuts the stall short, so this returns at once
    summary, rows, robot = run(tmp_path, mode="sync", max_ticks=1000, max_consecutive_misses=5,
                               stall={"every": 1, "seconds": 30.0})
    check_log(summary, rows, robot)
    assert summary["consecutive_miss_stop"] is True and summary["stop_reason"] == "consecutive_misses"
    assert summary["ticks"] == 5 and summary["deadline_misses"] == 5
    assert summary["wall_s"] < 20
    assert not [t for t in threading.enumerate() if t.name.startswith("dp-control-inference")]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_run_ends_cleanly(tmp_path, sig):
    class SignalledRobot(RecordingRobot):
        """Sends the signal from a timer thread shortly after the 10th action."""

        def act(self, action):
            super().act(action)
            if len(self.sent) == 10:
                self.timer = threading.Timer(0.05, signal.raise_signal, (sig,))
                self.timer.start()

    before = signal.getsignal(sig)
    robot = SignalledRobot()
    try:
        # misses never stop it (max_consecutive_misses=0): on a loaded machine they could end the run first
        summary = ControlLoop(tiny_policy(), robot, LoopConfig(hz=50, mode="async", max_ticks=5000, torch_threads=1,
                                                               max_consecutive_misses=0), tmp_path).run()
    finally:
        if hasattr(robot, "timer"):
            robot.timer.cancel()
    with open(tmp_path / "ticks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    check_log(summary, rows, robot)
    assert summary["stop_reason"] == signal.Signals(sig).name and not summary["consecutive_miss_stop"]
    assert 10 <= summary["ticks"] < 5000
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    assert signal.getsignal(sig) is before  # the previous handler is back
    assert not [t for t in threading.enumerate() if t.name.startswith("dp-control-inference")]


def test_streaming_mode_needs_a_streaming_sampler(tmp_path):
    with pytest.raises(ValueError, match=r"mode=streaming needs a policy whose sampler is 'streaming'.*'ddim'"):
        ControlLoop(tiny_policy(), RecordingRobot(), LoopConfig(mode="streaming"), tmp_path)
    policy = tiny_policy(n_obs_steps=1)  # streaming chunks must tile horizon - n_obs_steps + 1
    policy.set_sampler("streaming", 2)
    summary, rows, robot = run(tmp_path, policy=policy, mode="streaming", max_ticks=60)
    check_log(summary, rows, robot)
    assert summary["sampler"]["name"] == "streaming" and summary["predictions"] >= 1


def test_streaming_mode_selects_the_streaming_sampler_for_a_streaming_checkpoint(tmp_path, capsys):
    from train_helpers import tiny_checkpoint

    streaming = tiny_policy(n_obs_steps=1, streaming={"train_fraction": 0.8})
    tiny_checkpoint(tmp_path / "run", streaming)
    summary = control_checkpoint(str(tmp_path / "run"), hz=50, max_ticks=20, mode="streaming", torch_threads=1,
                                 max_consecutive_misses=0, max_steps=10)
    assert summary["sampler"] == {"name": "streaming", "steps": streaming.stream_layout.chunks}
    assert "sampler streaming with" in capsys.readouterr().out
    tiny_checkpoint(tmp_path / "plain", tiny_policy(n_obs_steps=1))  # never trained on staggered levels
    with pytest.raises(ValueError, match="mode=streaming needs a policy whose sampler is 'streaming'"):
        control_checkpoint(str(tmp_path / "plain"), hz=50, max_ticks=20, mode="streaming")


def test_streaming_starts_its_next_call_early_enough_to_be_ready(tmp_path):
    """Every call takes 1.5 periods (a machine too slow for sync): started a few ticks early, as async
    does, each chunk is ready when the last one ends."""
    policy = tiny_policy(n_obs_steps=1)
    policy.set_sampler("streaming", 2)
    summary, rows, robot = run(tmp_path, policy=policy, mode="streaming", hz=20, max_ticks=120,
                               stall={"every": 1, "seconds": 0.075})
    check_log(summary, rows, robot)
    assert summary["stalls_injected"] >= 10 and summary["deadline_misses"] == 0
    ticks = [int(r["tick"]) for r in rows if r["inference_ms"]]
    assert ticks, "no prediction finished inside the run"


def test_the_loop_says_before_the_first_tick_when_its_mode_cannot_hold_the_rate(tmp_path, capsys):
    from dp.control.loop import rate_warning

    sync = LoopConfig(hz=50, mode="sync")
    assert rate_warning(0.010, sync, 8) is None
    assert "more than the 19.0 ms a tick leaves" in rate_warning(0.025, sync, 8)
    assert rate_warning(0.100, LoopConfig(hz=50, mode="async"), 8) is None  # 6 ticks = 120 ms of budget
    assert "plan will run dry" in rate_warning(0.130, LoopConfig(hz=50, mode="async"), 8)
    policy = tiny_policy()  # every prediction takes at least 50 ms, at 50 Hz in sync mode
    fast = policy.predict_action
    policy.predict_action = lambda obs, **kw: (time.sleep(0.05), fast(obs, **kw))[1]
    summary, _, _ = run(tmp_path, policy, mode="sync", max_ticks=10)
    assert "mode=sync at 50 Hz" in summary["rate_warning"]
    assert "warning: mode=sync at 50 Hz" in capsys.readouterr().out


def test_bad_config_values_fail_clearly(tmp_path, capsys, monkeypatch):
    with pytest.raises(ValueError, match="hz must be a number > 0"):
        LoopConfig(hz=0)
    with pytest.raises(ValueError, match=r"mode must be one of \['sync', 'async', 'streaming'\], got 'fast'"):
        LoopConfig(mode="fast")
    with pytest.raises(ValueError, match=r"async_blend must be one of \['committed', 'ensemble'\]"):
        LoopConfig(async_blend="average")
    with pytest.raises(ValueError, match="stall must be"):
        LoopConfig(stall={"every": 2, "second": 1.0})
    with pytest.raises(ValueError, match="max_consecutive_misses must be an integer >= 0, got -1"):
        LoopConfig(max_consecutive_misses=-1)
    with pytest.raises(ValueError, match="hz must be a number > 0, got 'fast'"):
        LoopConfig(hz="fast")
    with pytest.raises(ValueError, match=r"robot must be 'sim' or \{_target_: module.Class, ...\}.*got 'ur5'"):
        control_checkpoint(str(tmp_path), robot="ur5")
    with pytest.raises(ValueError, match="safe_action must have 2 values"):
        ControlLoop(tiny_policy(), RecordingRobot(), LoopConfig(safe_action=[0, 0, 0]), tmp_path)
    for args, message in ((["hz=-5"], "error: hz must be a number > 0"),
                          (["mode=turbo"], "error: mode must be one of"),
                          (["robot._target_=no_such_module.Driver"], "error: robot._target_='no_such_module.Driver' "
                                                                      "cannot be imported"),
                          ([], "error: No checkpoint at")):
        monkeypatch.setattr(sys, "argv", ["dp-control", f"checkpoint={tmp_path / 'none'}", *args])
        with pytest.raises(SystemExit) as exit_info:
            dp_control()
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_cli_runs_a_checkpoint_in_its_own_task(tmp_path, monkeypatch, capsys):
    from train_helpers import tiny_checkpoint

    policy = tiny_policy()
    tiny_checkpoint(tmp_path / "run", policy)
    monkeypatch.setattr(sys, "argv", ["dp-control", f"checkpoint={tmp_path / 'run'}", "hz=50", "max_ticks=30",
                                      "mode=async", "progress=false", "torch_threads=1", "max_steps=10",
                                      "max_consecutive_misses=0", "sampler={name: ddim, steps: 4}"])
    dp_control()
    summary = json.loads((tmp_path / "run" / "control" / "summary.json").read_text())
    assert summary["ticks"] == 30 and summary["task"] == "toy" and summary["sampler"] == {"name": "ddim", "steps": 4}
    assert summary["episodes"] >= 1  # episodes of at most 10 steps
    assert '"ticks": 30' in capsys.readouterr().out


def test_cli_drives_a_user_robot_class_named_by_its_target(tmp_path, monkeypatch):
    """robot._target_=module.Class plugs a driver in without a code change; its arguments come as +robot.KEY."""
    from robot_plugins import ToyDriver
    from train_helpers import tiny_checkpoint

    tiny_checkpoint(tmp_path / "run", tiny_policy())
    ToyDriver.sent.clear()
    monkeypatch.setattr(sys, "argv", ["dp-control", f"checkpoint={tmp_path / 'run'}", "hz=50", "max_ticks=20",
                                      "mode=sync", "progress=false", "torch_threads=1", "max_consecutive_misses=0",
                                      "robot._target_=robot_plugins.ToyDriver", "+robot.gain=0.5"])
    dp_control()
    summary = json.loads((tmp_path / "run" / "control" / "summary.json").read_text())
    assert summary["robot"] == "robot_plugins.ToyDriver" and summary["ticks"] == 20
    sent = np.stack(ToyDriver.sent)
    assert len(sent) == 20 and np.isfinite(sent).all() and (np.abs(sent) <= 1).all()
    with pytest.raises(ValueError, match=r"robot robot_plugins.NotARobot lacks \['action_limits', 'instruction', "
                                         r"'observe', 'act'\]"):
        control_checkpoint(str(tmp_path / "run"), robot={"_target_": "robot_plugins.NotARobot"}, max_ticks=5)


def test_action_queue_merges_chunks_by_tick():
    q = ActionQueue()
    q.replace(10, np.arange(4.0)[:, None], keep=0, obs_time=0.0)  # ticks 10..13: 0, 1, 2, 3
    assert q.pop(11).action.item() == 1.0  # tick 10's action is dropped: its time has passed
    # committed: a chunk started at tick 12 continues the 2 planned actions (12, 13) and adds 14, 15
    np.testing.assert_array_equal(q.head(2)[:, 0], [2.0, 3.0])
    q.replace(12, np.array([[20.0], [30.0], [40.0], [50.0]]), keep=2, obs_time=1.0)
    assert [q.pop(t).action.item() for t in (12, 13, 14, 15)] == [2.0, 3.0, 40.0, 50.0]
    # ensemble: the older prediction weighs 1, the newer exp(-k)
    q.replace(0, np.zeros((4, 1)), keep=0, obs_time=0.0)
    q.ensemble(2, np.ones((4, 1)), k=np.log(3.0), obs_time=1.0)  # ticks 2, 3 overlap; 4, 5 new
    w = 1 / 3
    assert [q.pop(t).action.item() for t in range(6)] == pytest.approx([0, 0, w / (1 + w), w / (1 + w), 1, 1])


def _blow_up(policy, scale: float) -> DiTPolicy:
    """Every denoiser weight times ``scale`` (1e30: finite weights whose predictions overflow to NaN/inf)."""
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if not name.startswith("normalizer"):
                p.mul_(scale)
    return policy


def test_non_finite_predictions_never_reach_the_robot(tmp_path):
    policy = _blow_up(tiny_policy(), float("nan"))
    assert not torch.isfinite(policy.predict_action({"state": torch.zeros(1, 2, 4)})).any()
    summary, rows, robot = run(tmp_path, policy, mode="async", max_ticks=200, max_nonfinite=3)
    check_log(summary, rows, robot)
    assert robot.sent and all(np.isfinite(a).all() for a in robot.sent)
    assert summary["stop_reason"] == "nonfinite_actions" and summary["nonfinite_predictions"] == 3
    assert all(r["source"] != "policy" for r in rows)  # every tick held the safe action
    with pytest.raises(ValueError, match="max_nonfinite must be an integer >= 1"):
        LoopConfig(max_nonfinite=0)
    with pytest.raises(ValueError, match="safe_action must be null or a list of finite numbers"):
        LoopConfig(safe_action=[0.0, float("nan")])


def test_cli_exits_non_zero_on_non_finite_predictions(tmp_path, monkeypatch, capsys):
    from train_helpers import tiny_checkpoint

    policy = _blow_up(tiny_policy(), 1e30)  # finite weights: the checkpoint loads, its predictions do not
    tiny_checkpoint(tmp_path / "run", policy)
    monkeypatch.setattr(sys, "argv", ["dp-control", f"checkpoint={tmp_path / 'run'}", "hz=50", "max_ticks=200",
                                      "mode=sync", "progress=false", "torch_threads=1", "max_consecutive_misses=0",
                                      "task=toy"])
    with pytest.raises(SystemExit) as info:
        dp_control()
    assert info.value.code == 3
    assert "stopped on a fault (nonfinite_actions: 3 non-finite predictions" in capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "control" / "summary.json").read_text())
    assert summary["stop_reason"] == "nonfinite_actions" and summary["task"] == "toy"
