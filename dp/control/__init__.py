"""Deploy a policy in a fixed-rate control loop (``dp-control``).

    from dp.control import ControlLoop, LoopConfig, SimRobot
    robot = SimRobot("toy")
    summary = ControlLoop(policy, robot, LoopConfig(hz=20, mode="async", max_ticks=200), "out").run()

Pieces: ``robot`` (the ``Robot`` protocol, ``SimRobot``), ``loop`` (timing, inference
worker, action queue, watchdog), ``telemetry`` (ticks.csv, summary.json, histogram),
``cli`` (``dp-control``, hydra config ``dp/configs/control.yaml``).
"""
from dp.control.loop import BLENDS, MODES, ActionQueue, ControlLoop, LoopConfig, Predictor, check_policy_for_mode
from dp.control.robot import Robot, SimRobot

__all__ = ["ActionQueue", "BLENDS", "ControlLoop", "LoopConfig", "MODES", "Predictor", "Robot", "SimRobot",
           "check_policy_for_mode"]
