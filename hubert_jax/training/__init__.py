"""Training: optimizer and schedules, the pretraining step, checkpoints, logging and the loop."""
