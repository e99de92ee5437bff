import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("WANDB_MODE", "disabled")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def mixture_stores(tmp_path_factory):
    """Real stores of four robots (a UR5e and a Panda lifting a cube, two Pandas lifting a pot,
    Meta-World's Sawyer reaching), a few expert episodes each: the mixture and RDT tests' data."""
    from dp.collect import collect

    root = tmp_path_factory.mktemp("mixture")
    out = {}
    for task, opts, n in [("rs_lift", {"robot": "UR5e"}, 3), ("rs_two_arm_lift", {}, 2), ("mw_reach", {}, 4),
                          ("rs_lift_panda", {"robot": "Panda"}, 2)]:
        path = root / f"{task}.zarr"
        env = task.removesuffix("_panda")
        collect({"task": {"name": env, "env": env, "env_options": opts}, "n_episodes": n, "obs": "state",
                 "image_size": None, "output": str(path), "seed": 0, "keep_failed": False,
                 "max_attempts_factor": 2, "overwrite": False, "progress": False})
        out[task] = path
    return out
