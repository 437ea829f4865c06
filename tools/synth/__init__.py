"""Synthetic microscope fields with exact ground truth (training and pipeline tests)."""
