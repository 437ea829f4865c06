"""Offline tools for Eyepiece: synthetic data, sample generation, evaluation."""
