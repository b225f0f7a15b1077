"""Training: the run, its loop, the optimizer and schedule, several processes, MLM pretraining."""
