"""Evaluation: rollouts in simulation, metrics, videos, reports."""
