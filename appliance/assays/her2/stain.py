"""Ruifrok-Johnston colour deconvolution of brightfield H-DAB images (numpy only).

Light through a stained section follows Beer-Lambert per channel, so in optical density
(OD = log10(white / I)) the stains add: OD = h * H + d * DAB + e * R, where H and DAB are the
unit OD vectors of the two stains and R is the unit vector orthogonal to both. Inverting the
3x3 matrix of those rows gives the amount of each stain per pixel. Because R is orthogonal to
the H-DAB plane, its coefficient is exactly the part of the colour that no mix of the two
stains explains; the quality gate uses it to spot other dyes (eosin, green, fluorescence).

Reference: Ruifrok & Johnston, Anal Quant Cytol Histol 23:291 (2001); vectors H (0.65, 0.70,
0.29) and DAB (0.27, 0.57, 0.78), normalised to unit length (config her2.stain).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from appliance.assays.her2.flat_field import estimate_gain, flatten
from appliance.config import StainConfig

# Pixel values are floored at 1 before the log: a 0 would be an infinite OD, and one grey
# level of headroom caps the OD at log10(255) ~ 2.4, far beyond any usable stain.
_MIN_LEVEL = 1.0
# White estimation works on a subsample: the glass level is a property of thousands of
# pixels, and a fixed budget keeps it well under a millisecond at any image size.
_WHITE_SAMPLE = 20_000
_WHITE_TOP_PERCENTILE = 99.5
# Glass pixels sit within this band below the brightest pixels (noise, vignetting, JPEG)...
_GLASS_BAND_FRACTION = 0.06
_GLASS_BAND_MIN_LEVELS = 6.0
# ... and there must be at least this fraction of them for the band to be taken as glass.
_MIN_GLASS_FRACTION = 0.03


@dataclass(frozen=True)
class StainMaps:
    """Per-pixel stain amounts in optical-density units, and the white level used.

    ``hematoxylin`` and ``dab`` are signed: noise and colours outside the H-DAB cone give
    small negative values, left unclipped so that averages over a membrane stay unbiased.
    ``residual`` is the magnitude (>= 0) of the OD along the third, orthogonal vector.
    """

    hematoxylin: np.ndarray  # (H, W) float32 OD along the haematoxylin vector
    dab: np.ndarray  # (H, W) float32 OD along the DAB vector
    residual: np.ndarray  # (H, W) float32 |OD| along the residual vector
    white: tuple[float, float, float]  # glass brightness per channel (R, G, B)


def _unit(vector: Sequence[float], name: str) -> np.ndarray:
    """The vector scaled to unit length; refuses a wrong length or a zero vector."""
    v = np.asarray(vector, dtype=np.float64)
    if v.shape != (3,) or not np.all(np.isfinite(v)):
        raise ValueError(f"stain vector {name} must be 3 finite numbers (R, G, B), got {vector}")
    norm = float(np.linalg.norm(v))
    if norm == 0.0:
        raise ValueError(f"stain vector {name} is all zeros")
    return v / norm


def stain_matrix(cfg: StainConfig) -> np.ndarray:
    """The 3x3 matrix whose rows are the unit H, DAB and residual (H x DAB) OD vectors."""
    h = _unit(cfg.hematoxylin, "her2.stain.hematoxylin")
    d = _unit(cfg.dab, "her2.stain.dab")
    r = np.cross(h, d)
    norm = float(np.linalg.norm(r))
    # Nearly parallel stain vectors cannot be told apart: the inverse would amplify noise.
    if norm < 1e-3:
        raise ValueError(
            "stain vectors her2.stain.hematoxylin and her2.stain.dab are parallel; "
            "they cannot be separated"
        )
    return np.stack([h, d, r / norm])


def estimate_white(rgb: np.ndarray) -> tuple[float, float, float]:
    """Background (glass) brightness per channel, 1..255.

    The glass is the band of brightest pixels; when it covers at least 3 % of the field its
    per-channel median is returned. With little or no glass (tissue edge to edge) the 99.5th
    percentile per channel is the best estimate left; both are capped at 255.
    """
    pixels = _check_rgb(rgb).reshape(-1, 3)
    step = max(1, pixels.shape[0] // _WHITE_SAMPLE)
    sample = pixels[::step].astype(np.float32)
    brightness = sample.mean(axis=1)
    top = _percentile(brightness, _WHITE_TOP_PERCENTILE)
    band = max(_GLASS_BAND_MIN_LEVELS, _GLASS_BAND_FRACTION * top)
    glass = sample[brightness >= top - band]
    if glass.shape[0] >= _MIN_GLASS_FRACTION * sample.shape[0]:
        level = np.median(glass, axis=0)
    else:
        level = np.array([_percentile(sample[:, c], _WHITE_TOP_PERCENTILE) for c in range(3)])
    level = np.clip(level, _MIN_LEVEL, 255.0)
    return (float(level[0]), float(level[1]), float(level[2]))


def optical_density(rgb: np.ndarray, white: Sequence[float]) -> np.ndarray:
    """Base-10 optical density per channel, (H, W, 3) float32, >= 0.

    ``rgb`` may be uint8 or float (0..255 scale). Pixels brighter than ``white`` read 0.
    """
    img = _check_rgb(rgb)
    w = np.asarray(white, dtype=np.float64)
    if w.shape != (3,) or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"white must be 3 positive levels (R, G, B), got {white}")
    log_white = np.log10(np.maximum(w, _MIN_LEVEL)).astype(np.float32)
    level = np.maximum(img.astype(np.float32, copy=False), np.float32(_MIN_LEVEL))
    od = log_white - np.log10(level)
    np.maximum(od, 0.0, out=od)
    return od


def deconvolve(rgb: np.ndarray, cfg: StainConfig) -> StainMaps:
    """Split an RGB field into haematoxylin, DAB and residual OD maps.

    The white level is ``cfg.white_level`` when set (> 0), else estimated from the field;
    with ``cfg.flat_field`` the field's uneven illumination is corrected first.
    """
    img = _check_rgb(rgb)
    if cfg.flat_field:
        img = flatten(img, estimate_gain(img))
    white = (float(cfg.white_level),) * 3 if cfg.white_level > 0 else estimate_white(img)
    od = optical_density(img, white)
    # Row-vector convention: od = c @ M, so c = od @ inv(M). Written as nine scaled adds of
    # contiguous channel planes: a BLAS matrix product here is no faster single-threaded and
    # far slower when its threads compete with the rest of the appliance for the cores.
    unmix = np.linalg.inv(stain_matrix(cfg)).astype(np.float32)
    planes = [np.ascontiguousarray(od[..., c]) for c in range(3)]
    maps = [planes[0] * unmix[0, k] + planes[1] * unmix[1, k] + planes[2] * unmix[2, k]
            for k in range(3)]
    return StainMaps(
        hematoxylin=maps[0],
        dab=maps[1],
        residual=np.abs(maps[2]),
        white=(white[0], white[1], white[2]),
    )


def _percentile(values: np.ndarray, q: float) -> float:
    """A nearest-rank percentile of a 1-D array (partition is several times faster)."""
    k = min(values.size - 1, max(0, round(q / 100.0 * (values.size - 1))))
    return float(np.partition(values, k)[k])


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    """Refuse anything that is not a non-empty (H, W, 3) image."""
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.size == 0:
        shape = getattr(rgb, "shape", None)
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {shape}")
    if rgb.dtype.kind == "f" and not np.all(np.isfinite(rgb)):
        raise ValueError("the RGB image holds NaN or infinite values")
    return rgb
