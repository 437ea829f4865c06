"""HER2 IHC assay: H-DAB measurements, per-cell membrane classes, ASCO/CAP field score."""
