"""Eyepiece appliance: capture → inference → assays → outputs → service."""

__version__ = "0.1.0"
