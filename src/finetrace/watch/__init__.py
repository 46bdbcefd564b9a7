"""Monitoring a training run: the cheap audit of each checkpoint, the series it makes, and `watch`."""
