"""One place that builds MuJoCo offscreen renderers for the envs (metaworld, robosuite)."""
from __future__ import annotations


def make_renderer(model, size: int, msaa: bool):
    """A ``mujoco.Renderer`` of ``size`` x ``size`` for ``model`` (an MjModel), shadows and
    reflections off (4x slower in software rendering, no task information)."""
    import mujoco

    # the offscreen buffer must hold the frame
    model.vis.global_.offwidth = max(model.vis.global_.offwidth, size)
    model.vis.global_.offheight = max(model.vis.global_.offheight, size)
    # read once, when the GL context is made: 4x multisampling halves the frame rate of
    # software rendering, so observations go without it.
    model.vis.quality.offsamples = 4 if msaa else 0
    try:
        r = mujoco.Renderer(model, height=size, width=size)
    except Exception as e:  # mujoco.FatalError; most often MUJOCO_GL set too late
        raise RuntimeError(
            f"could not create a MuJoCo renderer ({e}). Headless: set MUJOCO_GL=egl "
            "(and PYOPENGL_PLATFORM=egl) before anything imports mujoco, e.g. in the shell."
        ) from e
    r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
    r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
    return r
