"""Camera frames as dp reads them: uint8 [T, H, W, C], 0..255.

diffusion_policy's published PushT store keeps ``data/img`` as float32 holding 0..255 (its own
dataset class divides by 255 on read). dp accepts such a store as it is: a float image array whose
values lie in [0, 255] is read as uint8 (rounded; 4x less memory). Floats in [0, 1] or outside
[0, 255] are refused, since either scale would be a guess.
"""
from __future__ import annotations

import numpy as np

IMAGE_CHANNELS = (1, 3, 4)  # channels-last frames dp stores and reads


def is_frames(shape: tuple[int, ...]) -> bool:
    """[T, H, W, C] with C in 1/3/4: an image array, whatever its dtype."""
    return len(shape) == 4 and shape[-1] in IMAGE_CHANNELS


def float_frames_problem(lo: float, hi: float) -> str | None:
    """What is wrong with float frames whose values span [lo, hi], or None when they read as 0..255."""
    if lo < 0 or hi > 255:
        return (f"float frames with values in [{lo:.3g}, {hi:.3g}], outside [0, 255]; dp reads images as 0..255 "
                f"(uint8, or float holding 0..255). Re-save them as uint8.")
    if hi <= 1.0 and hi > 0:
        return (f"float frames with values in [{lo:.3g}, {hi:.3g}]: 0..1 scaled, where dp reads 0..255. Re-save "
                f"them as uint8: np.round(x * 255).astype(np.uint8).")
    return None


def as_uint8_frames(x: np.ndarray, name: str = "frames") -> np.ndarray:
    """Float frames holding 0..255 -> uint8 (rounded); uint8 frames as they are. Raises ValueError
    (``float_frames_problem``) for floats on another scale."""
    if x.dtype == np.uint8:
        return x
    if x.size and (why := float_frames_problem(float(np.nanmin(x)), float(np.nanmax(x)))):
        raise ValueError(f"{name}: {why}")
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)
