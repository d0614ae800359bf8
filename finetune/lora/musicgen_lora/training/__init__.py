"""Training: the loop (trainer), its resumable state, checkpoints, the metrics log, runtime and guards."""
