"""Training: Trainer, EMA, checkpoints, schedules, distributed."""
