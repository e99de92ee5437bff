"""Simulated tasks with scripted experts.

    env = envs.make("mw_push", obs="image")      # gymnasium env, dict observations
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
from envs.registry import expert, make, task_info, task_names, task_set, task_sets

__all__ = ["make", "expert", "task_names", "task_set", "task_sets", "task_info"]
