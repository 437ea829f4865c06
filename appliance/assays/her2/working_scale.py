"""The pixel scale the model and the measurements work at, and the resampling to it.

The camera does not know the objective: a field arrives at 0.25–1 µm/px. The
model was trained on a band of working scales; the image is resampled into that
band (never finer than ``working_um_per_px``), and coarser still when the field
would exceed the pixel budget that keeps the loop real time.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from appliance.config import MeasureConfig


def choose_working_scale(um_per_px: float, height: int, width: int,
                         cfg: MeasureConfig) -> float:
    """The µm/px to work at for a ``height`` × ``width`` image at ``um_per_px``."""
    scale = max(um_per_px, cfg.working_um_per_px)
    area_um2 = height * width * um_per_px * um_per_px
    budget_px = cfg.max_working_megapixels * 1e6
    scale = max(scale, math.sqrt(area_um2 / budget_px))
    return min(scale, cfg.max_working_um_per_px)


def resample(rgb: np.ndarray, um_per_px: float, working_um_per_px: float) -> np.ndarray:
    """Resize ``rgb`` from ``um_per_px`` to ``working_um_per_px`` (area-average to shrink)."""
    factor = um_per_px / working_um_per_px
    if abs(factor - 1.0) < 1e-3:
        return rgb
    h, w = rgb.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    return cv2.resize(rgb, size, interpolation=interp)
