"""Deployment: a policy's prediction as one fixed-shape function of tensors (``PlannedPrediction``),
captured in a CUDA graph (``GraphedPrediction``) or exported as a self-contained artifact
(``dp-export``, loaded by ``ExportedPolicy`` without dp's training code)."""
from dp.deploy.planned import PlannedPrediction

__all__ = ["PlannedPrediction"]
