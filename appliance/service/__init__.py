"""Service: composition of the stages into a running loop."""
