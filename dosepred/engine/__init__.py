"""Training: the trainer of small hook methods, its config, checkpoints and distributed helpers."""
