"""Uneven illumination of an eyepiece camera, estimated from the field itself.

A cheap camera behind an eyepiece darkens towards the corners (vignetting) and the lamp
is rarely centred. Optical density is measured against the glass brightness, so a corner
at 70 % light reads as 0.15 OD of stain that is not there: enough to move a membrane from
moderate to strong. Without a blank-glass reference, the light is estimated as a smooth
surface under the brightest parts of the picture: in coarse blocks the brightest pixels
(glass, or the palest cytoplasm where there is no glass) follow the light; a quadratic
surface fitted to them, refitted without the blocks that sit well below it (tissue with
no glass), is the illumination. The correction only ever brightens, never darkens.
"""

from __future__ import annotations

import numpy as np

_GRID = 12  # blocks across the longer side
_REFITS = 3
_DROP_BELOW = 0.04  # blocks this far (relative) under the surface are tissue, not light
_MIN_GAIN = 0.4  # darker than this is not vignetting; leave it to the exposure gate
_MIN_SIDE = 128  # smaller pictures (crops, thumbnails) show too little of the light to fit it


def _design(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    return np.stack([np.ones_like(xs), xs, ys, xs * xs, ys * ys, xs * ys], axis=1)


def estimate_gain(rgb: np.ndarray) -> np.ndarray:
    """Relative illumination, (H, W) float32 in [_MIN_GAIN, 1], 1 where the light is brightest."""
    h, w = rgb.shape[:2]
    if min(h, w) < _MIN_SIDE:
        return np.ones((h, w), np.float32)
    brightness = rgb.astype(np.float32).mean(axis=2)
    gh = max(2, round(_GRID * h / max(h, w)))
    gw = max(2, round(_GRID * w / max(h, w)))
    # The brightest pixels of each block (98th percentile), placed where they are: under a
    # steep vignette they sit on the block's inner side, not at its centre.
    values, px, py = [], [], []
    ys = np.linspace(0, h, gh + 1).astype(int)
    xs = np.linspace(0, w, gw + 1).astype(int)
    for i in range(gh):
        for j in range(gw):
            cell = brightness[ys[i]:ys[i + 1], xs[j]:xs[j + 1]]
            level = np.percentile(cell, 98)
            by, bx = np.nonzero(cell >= level)
            values.append(float(cell[by, bx].mean()))
            py.append((ys[i] + by.mean() + 0.5) / h - 0.5)
            px.append((xs[j] + bx.mean() + 0.5) / w - 0.5)
    a = _design(np.asarray(px), np.asarray(py))
    z = np.asarray(values, np.float64)
    keep = z > 0
    coef = np.zeros(6)
    for _ in range(_REFITS):
        coef, *_ = np.linalg.lstsq(a[keep], z[keep], rcond=None)
        keep = z >= (a @ coef) * (1.0 - _DROP_BELOW)
        if keep.sum() < 6:
            return np.ones((h, w), np.float32)
    # Evaluate the surface at full resolution from its coefficients (smooth, no blocks).
    fy = (np.arange(h, dtype=np.float64) + 0.5) / h - 0.5
    fx = (np.arange(w, dtype=np.float64) + 0.5) / w - 0.5
    c0, c1, c2, c3, c4, c5 = coef
    surface = (c0 + c1 * fx[None, :] + c2 * fy[:, None] + c3 * fx[None, :] ** 2
               + c4 * fy[:, None] ** 2 + c5 * fx[None, :] * fy[:, None])
    peak = float(max(surface.max(), 1.0))
    return np.clip(surface / peak, _MIN_GAIN, 1.0).astype(np.float32)


def flatten(rgb: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """The picture as if evenly lit: float32 (H, W, 3) on the 0..255 scale."""
    return rgb.astype(np.float32) / gain[..., None]
