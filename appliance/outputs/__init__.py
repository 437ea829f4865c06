"""Outputs: overlay pictures, the result JSON, the local results store."""
