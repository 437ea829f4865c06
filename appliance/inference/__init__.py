"""Inference stage: model manifests and the backends that run them."""
