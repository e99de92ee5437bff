"""The shared diffusion-transformer core."""
from dp.core.dit import DiT, ConditionCache, DiTBlock
from dp.core.embeddings import ActionHead, ActionTokenizer, LevelEmbedding, PatchTokenizer, sinusoidal

__all__ = ["DiT", "DiTBlock", "ConditionCache", "LevelEmbedding", "ActionTokenizer", "ActionHead",
           "PatchTokenizer", "sinusoidal"]
