"""Monitoring a training run: the cheap audit of one checkpoint, the checkpoints of a run, and the
series of audits they make (`verbs.watch` runs them)."""
