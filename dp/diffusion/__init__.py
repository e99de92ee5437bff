"""Noise processes and samplers."""
from dp.diffusion.process import PREDICTIONS, SCHEDULES, GaussianProcess
from dp.diffusion.samplers import SAMPLERS, Sampler, make_sampler

__all__ = ["GaussianProcess", "SCHEDULES", "PREDICTIONS", "Sampler", "SAMPLERS", "make_sampler"]
