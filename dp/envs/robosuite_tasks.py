"""`rs`: five robosuite 1.5 manipulation tasks, OSC_POSE control, with scripted experts.

    env = envs.make("rs_lift", obs="image")       # dict obs: state [S] f32, image [84,84,3] u8
    env = envs.make("rs_lift", robot="Sawyer")     # Panda (default), Sawyer, IIWA, UR5e, ...
    expert = envs.expert("rs_lift")                # waypoint state machine (robosuite_experts)

=================  ===================  ===============================================  =====
name               robosuite env        instruction                                      steps
=================  ===================  ===============================================  =====
rs_lift            Lift                 lift the red cube                                  200
rs_can             PickPlaceCan         pick up the can and place it in its bin            400
rs_square          NutAssemblySquare    fit the square nut onto the square peg             400
rs_stack           Stack                stack the red cube on top of the green cube        300
rs_two_arm_lift    TwoArmLift           lift the pot by both handles with the two arms     300
=================  ===================  ===============================================  =====

(steps: default ``max_episode_steps`` at robosuite's 20 Hz control.)

Control: robosuite's ``BASIC`` composite controller, whose arm part is ``OSC_POSE`` with
delta input in the robot base frame: per arm ``[dx, dy, dz, ax, ay, az, grip]`` in [-1, 1];
1 maps to 5 cm (position) and 0.5 rad (axis-angle rotation) of goal change per step,
``grip`` -1 opens and +1 closes. ``rs_two_arm_lift`` uses two Pandas (``robot`` sets both)
in robosuite's ``"parallel"`` configuration: both stand side by side on the -x side of
the table (robot0 at y=-0.25, robot1 at y=+0.25), so both base frames are the world frame
and the same action means the same motion for either arm; the action is robot0's 7
numbers then robot1's. robot0 holds handle0 (the one on its -y side), robot1 handle1.

State (float32 [S]), in this fixed order (``env.unwrapped.state_keys`` lists
``(key, size)`` pairs and ``env.unwrapped.state_slices`` maps each key to its slice):

- per robot i (robot0, then robot1 for the two-arm task): ``robot{i}_eef_pos`` [3]
  (world, m), ``robot{i}_eef_quat`` [4] (x, y, z, w; the hand frame points down with
  x forward when R = diag(1, -1, -1), for every robot), ``robot{i}_gripper_qpos``
  [2 for Panda and Sawyer, 6 for IIWA and UR5e];
- then robosuite's ``object-state``, in robosuite's order:

  ==============  ========================================================================
  rs_lift         cube_pos 3, cube_quat 4, gripper_to_cube_pos 3                      (10)
  rs_can          Can_to_robot0_eef_pos 3, Can_to_robot0_eef_quat 4, Can_pos 3,
                  Can_quat 4                                                          (14)
  rs_square       SquareNut_to_robot0_eef_pos 3, SquareNut_to_robot0_eef_quat 4,
                  SquareNut_pos 3, SquareNut_quat 4                                   (14)
  rs_stack        cubeA_pos 3, cubeA_quat 4, cubeB_pos 3, cubeB_quat 4, cubeA_to_cubeB 3,
                  gripper_to_cubeA 3, gripper_to_cubeB 3                              (23)
  rs_two_arm_lift pot_pos 3, pot_quat 4, handle0_xpos 3, handle1_xpos 3,
                  gripper0_to_handle0 3, gripper1_to_handle1 3                        (19)
  ==============  ========================================================================

So for Panda, S is 19 (lift), 23 (can, square), 32 (stack), 37 (two-arm lift).

Scenes: ``reset(seed=s)`` reseeds robosuite's own generator (``env.rng``, the one its
placement samplers and the robots' joint-noise draw from; robosuite 1.5 uses no global
``np.random`` for scenes) in place, so the same seed gives the same scene, in this env or
a new one. Without a seed, resets continue one random stream (seeded once from gym's
``np_random``). Scenes are reset with ``hard_reset=False`` (no model reload).

Options (``envs.make("rs_lift", **options)``):
  obs               "state" (default) or "image" (image mode keeps ``state``)
  robot             robosuite robot name, default "Panda" (the experts are tuned for Panda;
                    rs_lift's also works for Sawyer, IIWA and UR5e)
  image_size        side of the square ``image`` observation, default 84
  camera            MuJoCo camera for ``image`` and ``render()``, default "agentview"
  max_episode_steps episode length, default per task (table above)
  render_size       side of the square frame ``render()`` returns, default 256

Images: we render with our own ``mujoco.Renderer`` on robosuite's model, not robosuite's
offscreen renderer (``has_offscreen_renderer`` and ``use_camera_obs`` stay False): one
code path for ``image`` and for ``render()``, which works in state mode too (the GL
context is created on first use), frames come out upright (robosuite's own camera images
are upside down, OpenGL row order), and shadows and reflections are off (a fair speed-up
with software EGL rendering; they carry no task information). As in robosuite's own
renderer, visual meshes (geom group 1) are drawn and collision geoms (group 0) are not.

``info["is_success"]`` is robosuite's ``env._check_success()``; the episode terminates on
success and truncates after ``max_episode_steps``. ``reward`` is robosuite's sparse reward.

Experts (``envs.robosuite_experts``): deterministic waypoint state machines; measured
success over seeds 0..49 is in ``bench/results/expert_success_robosuite.jsonl``.
"""
from __future__ import annotations

import atexit
import logging
import os
import sys
import weakref

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from dp.envs.base import check_obs_mode
from dp.envs.errors import EnvOptionError, EnvValueError
from dp.envs.rendering import make_renderer

if sys.platform.startswith("linux"):  # headless rendering; must precede importing mujoco
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

TASKS = {
    "rs_lift": dict(env="Lift", instruction="lift the red cube", steps=200),
    "rs_can": dict(env="PickPlaceCan", instruction="pick up the can and place it in its bin", steps=400),
    "rs_square": dict(env="NutAssemblySquare", instruction="fit the square nut onto the square peg", steps=400),
    "rs_stack": dict(env="Stack", instruction="stack the red cube on top of the green cube", steps=300),
    "rs_two_arm_lift": dict(
        env="TwoArmLift", instruction="lift the pot by both handles with the two arms", steps=300, arms=2
    ),
}
NAMES = list(TASKS)
EXPERTS = "dp.envs.robosuite_experts"  # the registry finds expert() there (experts import this module)
# size of robosuite's object-state per task (the experts read it from the end of `state`)
OBJECT_DIMS = {"rs_lift": 10, "rs_can": 14, "rs_square": 14, "rs_stack": 23, "rs_two_arm_lift": 19}
TWO_ARM_CONFIGURATION = "parallel"
CONTROL_FREQ = 20
# robosuite robot -> the name of its unified-space map (dp/data/unified.py EMBODIMENTS)
EMBODIMENT_OF_ROBOT = {"Panda": "panda", "Sawyer": "sawyer", "IIWA": "iiwa", "UR5e": "ur5e"}
OPTIONS = ("obs", "robot", "image_size", "camera", "max_episode_steps", "render_size", "extra_cameras")

# robosuite messages that carry no information for us: setup hints printed at import,
# optional packages we do not use, and the BASIC composite config naming body parts
# (left arm, torso, head, base, legs) that single-arm robots do not have.
_QUIET = (
    "No private macro file found",
    "It is recommended to use a private macro file",
    "To setup, run:",
    "Could not import robosuite_models",
    "Could not load the mink-based whole-body IK",
    "but the robot does not have this component",
    "Loading controller configuration from",
)


class _QuietFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(q in msg for q in _QUIET)


def _robosuite():
    """Import robosuite with its harmless start-up chatter filtered out."""
    if "robosuite" not in sys.modules:
        # the logger object outlives robosuite's (re)configuration of it at import
        logging.getLogger("robosuite_logs").addFilter(_QuietFilter())
    import robosuite

    return robosuite


def instruction(name: str) -> str:
    return TASKS[name]["instruction"]


# Envs holding GL renderers. Their contexts must be freed before mujoco's own atexit hook
# terminates the EGL display (see envs.metaworld_tasks).
_WITH_RENDERERS: weakref.WeakSet = weakref.WeakSet()
_exit_hook_registered = False


def _close_renderers_at_exit() -> None:
    for env in list(_WITH_RENDERERS):
        env._close_renderers()


# robosuite 1.5.2's Sawyer: the collision sphere of link0 (turned by joint 0) rests on the
# static base cylinder ``base_col``. Bodies welded to the world escape MuJoCo's
# parent-child contact filter, so that contact's friction pins joint 0 and the arm cannot
# turn about its base (the OSC then misses targets by centimetres). Nothing else can touch
# that cylinder (it sits inside the pedestal), so we take it out of collisions.
_STATIC_CONTACT_FIXES = {"Sawyer": ("base_col",)}


def _controller_config(suite) -> dict:
    cfg = suite.load_composite_controller_config(controller="BASIC")
    for part in ("right", "left"):  # the arm parts; robosuite drops those a robot lacks
        arm = cfg["body_parts"][part]
        if arm["type"] != "OSC_POSE" or arm["input_type"] != "delta":
            raise RuntimeError(f"robosuite's BASIC controller changed: {part} arm is {arm['type']}")
    return cfg


class RobosuiteEnv(gym.Env):
    """One robosuite task as a gymnasium env with dict observations (see module doc)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_FREQ}

    def __init__(
        self,
        name: str,
        obs: str = "state",
        robot: str = "Panda",
        image_size: int = 84,
        camera: str = "agentview",
        max_episode_steps: int | None = None,
        render_size: int = 256,
        extra_cameras: tuple[str, ...] | list[str] = (),
    ):
        suite = _robosuite()
        self.name = name
        self.obs_mode = check_obs_mode(obs)
        task = TASKS[name]
        if not isinstance(robot, str) or robot not in suite.ALL_ROBOTS:
            raise EnvValueError(f"robot must be one of {sorted(suite.ALL_ROBOTS)}, got {robot!r}.")
        self.robot = robot
        self.n_arms = task.get("arms", 1)
        self.image_size = int(image_size)
        self.render_size = int(render_size)
        self.camera = camera
        self.instruction = task["instruction"]
        self.render_mode = "rgb_array"
        self.max_episode_steps = int(task["steps"] if max_episode_steps is None else max_episode_steps)
        if self.max_episode_steps < 1 or self.image_size < 1 or self.render_size < 1:
            raise EnvValueError("max_episode_steps, image_size and render_size must be positive.")

        kwargs = {}
        if self.n_arms == 2:
            kwargs["env_configuration"] = TWO_ARM_CONFIGURATION
        self._env = suite.make(
            task["env"],
            robots=[robot] * self.n_arms if self.n_arms > 1 else robot,
            controller_configs=_controller_config(suite),
            has_renderer=False,
            has_offscreen_renderer=False,
            use_camera_obs=False,
            use_object_obs=True,
            reward_shaping=False,
            hard_reset=False,
            control_freq=CONTROL_FREQ,
            horizon=10**9,  # we truncate ourselves
            ignore_done=True,
            **kwargs,
        )
        model = self._env.sim.model
        for i in range(self.n_arms):
            for geom in _STATIC_CONTACT_FIXES.get(robot, ()):
                gid = model.geom_name2id(f"robot{i}_{geom}")
                model.geom_contype[gid] = model.geom_conaffinity[gid] = 0
        cameras = [model.camera_id2name(i) for i in range(model.ncam)]
        if camera not in cameras:
            raise EnvValueError(f"camera must be one of {cameras}, got {camera!r}.")
        # obs=image: "image" from `camera`, and "<name>_image" from each extra camera (e.g. the wrist's)
        self.extra_cameras = [extra_cameras] if isinstance(extra_cameras, str) else list(extra_cameras)
        unknown = [c for c in self.extra_cameras if c not in cameras]
        if unknown:
            raise EnvValueError(f"extra_cameras must be among {cameras}, got {unknown}.")

        raw = self._env._get_observations(force_update=True)
        keys = []
        for i in range(self.n_arms):
            keys += [f"robot{i}_eef_pos", f"robot{i}_eef_quat", f"robot{i}_gripper_qpos"]
        keys += [
            k
            for k, ob in self._env._observables.items()
            if ob.modality == "object" and ob.is_enabled() and ob.is_active()
        ]
        self.state_keys = [(k, int(np.asarray(raw[k]).size)) for k in keys]
        self.state_slices, start = {}, 0
        for k, n in self.state_keys:
            self.state_slices[k] = slice(start, start + n)
            start += n
        self.state_dim = start
        assert sum(n for k, n in self.state_keys[3 * self.n_arms :]) == OBJECT_DIMS[name], self.state_keys

        # the robots' own eef pose and gripper joints: the first 3 state keys per arm
        self.proprio_dims = sum(n for _, n in self.state_keys[: 3 * self.n_arms])
        obs_spaces = {"state": spaces.Box(-np.inf, np.inf, shape=(self.state_dim,), dtype=np.float32)}
        obs_spaces["agent_pos"] = spaces.Box(-np.inf, np.inf, shape=(self.proprio_dims,), dtype=np.float32)
        # arm joint positions (rad), robot0's then robot1's: the unified action space's joint slots
        self.joint_dims = sum(int(np.asarray(raw[f"robot{i}_joint_pos"]).size) for i in range(self.n_arms))
        obs_spaces["joint_pos"] = spaces.Box(-np.inf, np.inf, shape=(self.joint_dims,), dtype=np.float32)
        # the name of this robot's map into the unified space (dp/data/unified.py)
        self.embodiment = "two_arm_panda" if self.n_arms == 2 and robot == "Panda" else \
            EMBODIMENT_OF_ROBOT.get(robot) if self.n_arms == 1 else None
        if self.obs_mode == "image":
            for key in ["image", *(f"{c}_image" for c in self.extra_cameras)]:
                obs_spaces[key] = spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)
        low, high = self._env.action_spec
        self.action_space = spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)

        self._renderers: dict[tuple[int, bool], object] = {}
        self._scene_option = None
        self._seeded = False
        self._t = 0

    # -- rendering ---------------------------------------------------------------------
    def _renderer(self, size: int, msaa: bool):
        key = (size, msaa)
        r = self._renderers.get(key)
        if r is None:
            import mujoco

            r = make_renderer(self._env.sim.model._model, size, msaa)
            if self._scene_option is None:
                # as robosuite renders: visual meshes (group 1), not collision geoms (group 0)
                self._scene_option = mujoco.MjvOption()
                self._scene_option.geomgroup[0] = 0
                self._scene_option.geomgroup[1] = 1
            self._renderers[key] = r
            _WITH_RENDERERS.add(self)
            global _exit_hook_registered
            if not _exit_hook_registered:
                atexit.register(_close_renderers_at_exit)
                _exit_hook_registered = True
        return r

    def _frame(self, size: int, msaa: bool = False, camera: str | None = None) -> np.ndarray:
        r = self._renderer(size, msaa)
        r.update_scene(self._env.sim.data._data, camera=camera or self.camera, scene_option=self._scene_option)
        return np.ascontiguousarray(r.render())  # mujoco.Renderer frames are upright

    def render(self, size: int | None = None) -> np.ndarray:
        """Upright RGB frame for videos, uint8 [render_size, render_size, 3], from ``camera``
        (anti-aliased, unlike the ``image`` observation)."""
        return self._frame(int(size or self.render_size), msaa=True)

    # -- gym API -----------------------------------------------------------------------
    def _obs(self, raw: dict) -> dict[str, np.ndarray]:
        state = np.concatenate([np.asarray(raw[k], dtype=np.float64).reshape(-1) for k, _ in self.state_keys])
        out = {"state": state.astype(np.float32)}
        out["agent_pos"] = out["state"][: self.proprio_dims].copy()
        out["joint_pos"] = np.concatenate(
            [np.asarray(raw[f"robot{i}_joint_pos"], np.float32) for i in range(self.n_arms)])
        if self.obs_mode == "image":
            out["image"] = self._frame(self.image_size)
            for cam in self.extra_cameras:
                out[f"{cam}_image"] = self._frame(self.image_size, camera=cam)
        return out

    def _success(self) -> bool:
        return bool(self._env._check_success())

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None or not self._seeded:
            s = int(seed) if seed is not None else int(self.np_random.integers(2**31 - 1))
            # in place: the placement samplers hold a reference to this very generator
            self._env.rng.bit_generator.state = np.random.default_rng(s).bit_generator.state
            self._seeded = True
        self._env.reset()
        # robosuite's reset computes the object-to-eef observables before the eef ones
        # (so they read 0); a second pass sees the filled cache
        raw = self._env._get_observations(force_update=True)
        self._t = 0
        return self._obs(raw), {"is_success": self._success(), "instruction": self.instruction}

    def step(self, action):
        action = np.clip(
            np.asarray(action, dtype=np.float64).reshape(self.action_space.shape),
            self.action_space.low,
            self.action_space.high,
        )
        raw, reward, _, _ = self._env.step(action)
        self._t += 1
        success = self._success()
        truncated = self._t >= self.max_episode_steps and not success
        return self._obs(raw), float(reward), success, truncated, {"is_success": success}

    def _close_renderers(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()

    def close(self):
        self._close_renderers()
        self._env.close()


def make(name: str, **options) -> RobosuiteEnv:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise EnvOptionError(f"unknown option(s) {unknown} for {name}; options are {list(OPTIONS)}.")
    return RobosuiteEnv(name, **options)
