"""Noise processes and samplers."""
from dp.diffusion.meanflow import MeanFlowProcess, make_process
from dp.diffusion.process import PREDICTIONS, SCHEDULES, GaussianProcess
from dp.diffusion.factory import POLICY_SAMPLERS, make_sampler
from dp.diffusion.samplers import SAMPLERS, Sampler

__all__ = ["GaussianProcess", "MeanFlowProcess", "SCHEDULES", "PREDICTIONS", "Sampler", "SAMPLERS", "make_process",
           "make_sampler"]
