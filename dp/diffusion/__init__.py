"""Noise processes and samplers."""
from dp.diffusion.process import PREDICTIONS, SCHEDULES, GaussianProcess
from dp.diffusion.factory import POLICY_SAMPLERS, make_sampler
from dp.diffusion.samplers import SAMPLERS, Sampler

__all__ = ["GaussianProcess", "SCHEDULES", "PREDICTIONS", "Sampler", "SAMPLERS", "make_sampler"]
