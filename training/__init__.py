"""Training: the fit loop, devices/AMP, checkpoints and curves, writing a run directory."""
