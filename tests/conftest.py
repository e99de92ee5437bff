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


@pytest.fixture(scope="session")
def image_stores(tmp_path_factory):
    """Real Meta-World image stores from the expert at 24 px (2 x 2 patches of 12 px): mw_push (3
    episodes), mw_reach (2, another task's video), and mw_push at 32 px (1, a mismatched size)."""
    from dp.collect import collect

    root = tmp_path_factory.mktemp("images")
    out = {}
    for name, task, n, size in [("push", "mw_push", 3, 24), ("reach", "mw_reach", 2, 24), ("push32", "mw_push", 1, 32)]:
        path = root / f"{name}.zarr"
        collect({"task": {"name": task, "env": task, "env_options": {}}, "n_episodes": n, "obs": "image",
                 "image_size": size, "output": str(path), "seed": 0, "keep_failed": False, "max_attempts_factor": 2,
                 "overwrite": False, "progress": False})
        out[name] = path
    return out
