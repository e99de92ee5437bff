"""dp: diffusion-transformer robot policies."""
__version__ = "0.1.0"
