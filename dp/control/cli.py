"""`dp-control checkpoint=PATH (or artifact=DIR) robot=sim hz=20 mode=async duration_s=60 output_dir=DIR` (dp/configs/control.yaml).

Exit status: 0 when the loop ran to its end, 2 for a user error (bad config, checkpoint),
3 when the loop stopped on a fault (non-finite predictions, too many missed deadlines).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from dp.cli_errors import run_config
from dp.constants import CONFIG_DIR, EVAL_SEED_BASE
from dp.control.loop import ControlLoop, LoopConfig, check_policy_for_mode
from dp.errors import ConfigError
from dp.checkpoint import checkpoint_tasks, load_config, resolve
from dp.policies.registry import load_policy
from dp.runtime.artifact import ExportedPolicy

SIM_ROBOT = "dp.control.robot.SimRobot"
FAULT_STOPS = ("nonfinite_actions", "consecutive_misses")  # stop reasons that end dp-control with status 3
EXIT_FAULT = 3


def streaming_sampler_for(policy) -> None:
    """``mode=streaming`` without ``sampler=...``: a policy trained for streaming (on chunk-staggered
    levels, ``policy.streaming.train_fraction`` > 0) gets the streaming sampler with one denoising
    pass per call (steps = its number of chunks). Others keep theirs, and the mode check says why."""
    if getattr(getattr(policy, "sampler", None), "name", None) == "streaming":
        return
    if getattr(policy, "stream_fraction", 0) > 0:
        steps = policy.stream_layout.chunks
        policy.set_sampler("streaming", steps)
        print(f"mode=streaming: sampler streaming with {steps} steps (one pass per call); the checkpoint was trained "
              f"for it. Pass sampler={{name: streaming, steps: K}} to choose K.")


def robot_spec(spec: str | dict) -> dict:
    """``"sim"`` or ``{_target_: module.Class, **arguments}`` -> the latter, checked (the class imports)
    before anything is loaded."""
    spec = {"_target_": SIM_ROBOT} if spec == "sim" else spec
    if not isinstance(spec, dict) or not isinstance(spec.get("_target_"), str):
        raise ConfigError(f"robot must be 'sim' or {{_target_: module.Class, ...}} naming a class that implements "
                          f"dp.control.robot.Robot; got {spec!r}.")
    _robot_class(spec["_target_"])
    return spec


def _robot_class(target: str):
    from hydra.utils import get_class

    try:
        return get_class(target)
    except Exception as e:  # noqa: BLE001 - hydra wraps import errors of every kind
        raise ConfigError(f"robot._target_={target!r} cannot be imported ({e}); give module.Class of a class on "
                          f"the Python path.") from None


def build_robot(spec: dict, task: str, env_options: dict, max_steps: int | None):
    """The robot of ``robot_spec``: a ``SimRobot`` (or subclass) also gets the task, env options and
    step limit; any other class gets only its arguments and must have the members of
    ``dp.control.robot.Robot``."""
    from dp.control.robot import Robot, SimRobot

    kwargs = {k: v for k, v in spec.items() if k != "_target_"}
    cls = _robot_class(spec["_target_"])
    if isinstance(cls, type) and issubclass(cls, SimRobot):
        kwargs = {"task": task, "env_options": env_options, "max_steps": max_steps, **kwargs}
    robot = cls(**kwargs)
    if not isinstance(robot, Robot):
        missing = [m for m in ("action_limits", "instruction", "episode", "observe", "act", "close")
                   if not hasattr(robot, m)]
        if hasattr(robot, "close"):
            robot.close()
        raise ConfigError(f"robot {spec['_target_']} lacks {missing} of the dp.control.robot.Robot protocol.")
    return robot


def control_checkpoint(checkpoint: str | None = None, robot: str | dict = "sim", task: str | dict | None = None,
                       max_steps: int | None = None,
                       duration_s: float | None = 60.0, max_ticks: int | None = None, output_dir: str | None = None,
                       ema: bool = True, device: str = "cpu", seed: int = 0, sampler: dict | None = None,
                       artifact: str | None = None, **loop_options) -> dict:
    """Load a checkpoint (or a ``dp-export`` artifact), build its robot, run the loop; the summary
    (also in output_dir/summary.json).

    ``task``: an env task name, or a task config (``dp-control task=mw_reach`` loads
    dp/configs/task/mw_reach.yaml); default: the checkpoint's (the first of a multi-task one).
    ``artifact``: run an exported artifact instead of a checkpoint (its sampler and batch are
    compiled in: ``sampler``, ``ema`` and ``device`` do not apply).
    ``robot``: ``"sim"`` or ``{_target_: module.Class, **arguments}`` (``build_robot``).
    ``loop_options`` are ``LoopConfig`` fields (hz, mode, async_blend, stall, ...)."""
    robot = robot_spec(robot)
    if (checkpoint is None) == (artifact is None):
        raise ConfigError("give one of checkpoint=RUN (a training checkpoint) or artifact=DIR (from dp-export).")
    if duration_s is not None and not (isinstance(duration_s, (int, float)) and duration_s > 0):
        raise ConfigError(f"duration_s must be > 0 or null, got {duration_s!r}.")
    config = LoopConfig(max_ticks=max_ticks, **loop_options)  # bad values fail before anything loads
    if config.max_ticks is None and duration_s is not None:
        config.max_ticks = max(1, round(duration_s * config.hz))
    if artifact is not None:
        if sampler:
            raise ConfigError("an artifact has its sampler compiled in; export it again with sampler=... instead.")
        policy = ExportedPolicy(artifact, seed=seed)
        meta = policy.meta
        tasks, env_options, seeds_max = meta["tasks"], meta["env_options"], meta["collection_seeds_max"]
        source, out_root = Path(artifact), Path(artifact)
    else:
        ckpt = resolve(checkpoint)
        cfg = load_config(ckpt)
        policy = load_policy(ckpt, ema=ema, device=device)
        if sampler:
            policy.set_sampler(**sampler)  # name, steps and any sampler options
        elif config.mode == "streaming":
            streaming_sampler_for(policy)
        policy.generator = torch.Generator(device=device).manual_seed(seed)
        tasks, env_options = checkpoint_tasks(cfg)  # the task and env options the way dp-eval finds them
        seeds_max = int(cfg.get("collection_seeds_max", -1))
        source, out_root = ckpt, ckpt.parent.parent
    check_policy_for_mode(policy, config.mode)
    if isinstance(task, dict):
        task = task.get("env")
    task = task or tasks[0]
    if EVAL_SEED_BASE <= seeds_max:
        raise ConfigError("evaluation seeds overlap the collection seeds; raise dp.constants.EVAL_SEED_BASE")
    out = Path(output_dir) if output_dir else out_root / "control"
    driven = build_robot(robot, task, env_options, max_steps)
    info = {("artifact" if artifact else "checkpoint"): str(source), "task": task,
            "robot": robot["_target_"], "output_dir": str(out)}
    try:
        return ControlLoop(policy, driven, config, out, info=info).run()
    finally:
        driven.close()


@hydra.main(config_path=CONFIG_DIR, config_name="control", version_base=None)
def _main(cfg: DictConfig) -> None:
    s = run_config(control_checkpoint, cfg)
    ms = {k: "-" if s[k] is None else f"{s[k]:.2f}" for k in
          ("jitter_ms_p50", "jitter_ms_p99", "inference_ms_p50", "inference_ms_p99")}
    print(f"{s['ticks']} ticks at {s['hz']:g} Hz ({s['mode']}), stopped by {s['stop_reason']}: "
          f"{s['deadline_misses']} deadline misses ({s['holds']} holds, {s['skipped']} skipped); "
          f"jitter p50 {ms['jitter_ms_p50']} ms, p99 {ms['jitter_ms_p99']} ms; "
          f"inference p50 {ms['inference_ms_p50']} ms, p99 {ms['inference_ms_p99']} ms")
    if s.get("episodes"):
        rate = f", success {s['success_rate']:.0%}" if s.get("success_rate") is not None else ""
        print(f"{s['episodes']} episodes{rate}")
    keys = ("ticks", "deadline_misses", "consecutive_miss_stop", "nonfinite_predictions", "episodes", "success_rate",
            "mode", "hz", "stop_reason")
    print(json.dumps({k: s[k] for k in keys}))
    if s["stop_reason"] in FAULT_STOPS:
        print(f"error: the control loop stopped on a fault ({s['stop_reason']}: {s['nonfinite_predictions']} "
              f"non-finite predictions, {s['deadline_misses']} deadline misses); no non-finite action was sent. "
              f"Details: {s['output_dir']}/summary.json and ticks.csv.", file=sys.stderr)
        sys.exit(EXIT_FAULT)


def main() -> None:
    from dp.overrides import replace_mappings_in_argv

    replace_mappings_in_argv()
    _main()


if __name__ == "__main__":
    main()
