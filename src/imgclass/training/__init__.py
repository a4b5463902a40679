"""Training: optimizer and schedule, a short loop with named events, callbacks, checkpoints."""
