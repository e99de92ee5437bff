"""The shared diffusion-transformer core."""
from dp.core.dit import DiT, ConditionCache, DiTBlock, dense_ffn, swiglu_ffn
from dp.core.embeddings import ActionHead, ActionTokenizer, LevelEmbedding, PatchTokenizer, sinusoidal
from dp.core.layers import SwiGLU
from dp.core.moe import NoiseRoutedMoE, moe_ffn

__all__ = ["DiT", "DiTBlock", "ConditionCache", "LevelEmbedding", "ActionTokenizer", "ActionHead",
           "PatchTokenizer", "sinusoidal", "NoiseRoutedMoE", "SwiGLU", "moe_ffn",
           "dense_ffn", "swiglu_ffn"]
