"""Simulated tasks with scripted experts.

    from dp import envs
    env = envs.make("mw_push", obs="image")      # gymnasium env, dict observations
    env = gymnasium.make("dp/mw_push-v0", obs="image")   # the same, registered with gymnasium (on import)
    vec = gymnasium.make_vec("dp/mw_push-v0", num_envs=4)
    expert = envs.expert("mw_push")               # .reset(), .act(obs) -> action
    envs.task_names()                             # every single-task name
    envs.task_set("mt10")                         # ["mw_reach", ...]

Conventions every task follows (tests check them):
- observations are dicts: ``state`` float32 [S] (everything, objects included);
  ``agent_pos`` float32 [P], the first P numbers of ``state``: the robot's own pose and
  gripper (``env.unwrapped.proprio_dims`` = P), what an image policy reads besides its
  camera; ``image`` uint8 [H, W, 3] when ``obs="image"``;
- ``info["is_success"]`` is a bool on every step; the episode terminates on success;
- ``env.unwrapped.instruction`` (and ``info["instruction"]`` from reset) is an English
  sentence describing the task;
- ``reset(seed=s)`` fixes the initial configuration: the same seed gives the same scene;
- ``env.render()`` returns an RGB frame for videos.
"""
from dp.envs.registry import expert, make, task_info, task_names, task_set, task_sets

__all__ = ["make", "expert", "task_names", "task_set", "task_sets", "task_info", "gymnasium_id"]


def gymnasium_id(name: str) -> str:
    """The gymnasium id of a task: ``dp/<name>-v0``."""
    return f"dp/{name}-v0"


def _register_with_gymnasium() -> None:
    """Every single task under ``gymnasium_id``; ``gymnasium.make("dp.envs:dp/mw_push-v0")`` imports this
    module itself. Options are ``make``'s (obs, image_size, camera, max_episode_steps, ...); the envs keep
    their own step limits, so gymnasium adds no TimeLimit of its own."""
    import gymnasium

    for name in task_names():
        if gymnasium_id(name) not in gymnasium.registry:
            gymnasium.register(gymnasium_id(name), entry_point="dp.envs.registry:make", kwargs={"name": name})


_register_with_gymnasium()
