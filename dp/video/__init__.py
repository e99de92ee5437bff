"""Future-frame prediction on the shared DiT core (``VideoPredictor``, ``policy=video``)."""
from dp.video.predictor import VideoPredictor

__all__ = ["VideoPredictor"]
