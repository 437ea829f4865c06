"""Live pipeline: still-field detection, field memory and pipeline metrics."""
