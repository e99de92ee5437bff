"""Observation encoders: low-dim MLP, image CNN, and their combination into tokens."""
from dp.encoders.image import ImageEncoder
from dp.encoders.obs import ObsEncoder
from dp.encoders.state import StateEncoder

__all__ = ["ImageEncoder", "ObsEncoder", "StateEncoder"]
