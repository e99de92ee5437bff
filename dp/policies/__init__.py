"""Policies: one file per method, all implementing dp.policies.base.Policy."""
from dp.policies.base import Policy
from dp.policies.dit import DiTPolicy
from dp.policies.mlp_bc import MLPBCPolicy

__all__ = ["Policy", "DiTPolicy", "MLPBCPolicy"]
