"""Quality gates for a brightfield H-DAB field, measured at working scale (numpy and cv2).

:func:`measure_quality` turns a field into a handful of numbers (:class:`QualityReport`);
:func:`quality_issues` compares them with the configured limits. Fatal issues make the
field not scorable; the others are warnings shown beside the score.

Why each measure is built the way it is:

* Exposure is judged on the raw RGB values (clipped, near-black, median brightness),
  since colour deconvolution is meaningless on clipped or black pixels.
* Tissue is where the colour departs from the glass colour: the OD vector's component off
  the grey axis (its "chroma"), lightly smoothed. Haematoxylin and DAB are coloured, while
  what darkens glass without staining it (vignetting, uneven light, dust on the camera
  window) is grey, so a glass-only field reads as no tissue however unevenly it is lit.
* Focus compares how steep the strongest edges are at a fine scale (Gaussian sigma 1 px)
  and at a coarse one (sigma 4 px), in the mean optical density over tissue: the RMS
  gradient ratio over the 5 % of tissue pixels with the strongest coarse gradient, after
  removing what sensor noise contributes at each scale. A sharp step edge gives about 4, a
  thin membrane more; blur of a few pixels brings it towards 1. Both gradients scale alike
  with stain strength, image size and how much of the field is stained, so the ratio
  depends on none of them. The mean OD is used, not the unmixed stains, because unmixing
  amplifies noise. Blur is judged in working-scale pixels.
* Wrong stain is the median, over tissue, of the share of each pixel's stain OD that lies
  off the haematoxylin-DAB plane (the Ruifrok-Johnston residual over H + DAB + residual).
  A share, not an absolute OD, so that faint eosin or a faint green counterstain is caught
  as surely as a strong one: about 0.07 for a real H-DAB photograph, 0.35-0.45 for eosin
  pink or a green dye.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import cv2
import numpy as np

from appliance.assays.her2.stain import StainMaps, optical_density
from appliance.assays.her2.types import QualityIssue, QualityReport
from appliance.config import QualityConfig

# Exposure statistics are fractions and a median: 50 k pixels pin them to < 0.5 %.
_STATS_SAMPLE = 50_000
# Any channel at or above: clipped. One clipped channel already shifts the hue, so the
# stain unmixing of that pixel is wrong even when the pixel does not look white.
_CLIPPED_LEVEL = 250
_NEAR_BLACK_LEVEL = 35  # brightest channel below: near-black
# Tissue: OD chroma (off the grey axis) above this after smoothing. Pure haematoxylin or DAB
# has a chroma of about a third of its OD, so this is a stain OD near 0.05; smoothed sensor
# noise on glass stays below 0.01 even for a small, noisy sensor.
_TISSUE_CHROMA = 0.015
_TISSUE_SMOOTH_SIGMA = 3.0
_MIN_TISSUE_PIXELS = 400  # fewer: focus and stain cannot be measured
# The two scales of the focus ratio (px at working scale) and the share of tissue pixels,
# those with the strongest coarse gradient, that it is measured on.
_FOCUS_FINE_SIGMA = 1.0
_FOCUS_COARSE_SIGMA = 4.0
_FOCUS_EDGE_SHARE = 0.05
# Immerkaer's noise estimator: this 3x3 kernel cancels smooth image content; its response to
# white noise of unit variance has a standard deviation of 6.
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
_NOISE_KERNEL_GAIN = 6.0
_MAD_TO_SIGMA = 1.0 / 0.6745
# A field that is nearly all near-black shows nothing at all: under-exposed, not fluorescence.
_NOTHING_VISIBLE_DARK_FRACTION = 0.99
_MIN_BRIGHTNESS = 50.0  # median brightness below this: under-exposed (fatal)
_WARN_BRIGHTNESS = 90.0  # below this: dim but usable (warning)
# Warnings start at this share of a gate's limit (before the gate is reached).
_WARN_SHARE_SATURATED = 0.5
_WARN_SHARE_RESIDUAL = 0.7
_WARN_FOCUS_MARGIN = 1.1  # focus within 10 % above the gate: warn


def measure_quality(rgb: np.ndarray, stains: StainMaps) -> QualityReport:
    """Measure exposure, tissue, focus and stain colour of a working-scale field."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    if stains.dab.shape != rgb.shape[:2]:
        raise ValueError(
            f"stain maps {stains.dab.shape} do not match the image {rgb.shape[:2]}"
        )
    brightest = _channel_extreme(rgb, cv2.max)
    saturated, dark, brightness = _exposure(rgb, brightest)
    od = optical_density(rgb, stains.white)
    tissue = tissue_mask(od) & (brightest >= _NEAR_BLACK_LEVEL)
    n_tissue = int(np.count_nonzero(tissue))
    measurable = n_tissue >= _MIN_TISSUE_PIXELS
    amount = stain_amount(stains)
    return QualityReport(
        tissue_fraction=n_tissue / tissue.size,
        focus=focus_measure(_mean_channel(od), tissue) if measurable else 0.0,
        saturated_fraction=saturated,
        dark_fraction=dark,
        stain_residual=residual_share(stains, amount, tissue) if measurable else 0.0,
        brightness=brightness,
    )


def tissue_mask(od: np.ndarray) -> np.ndarray:
    """Stained pixels of an (H, W, 3) OD image: smoothed chroma above the glass noise.

    Chroma is the OD vector's distance from the grey axis, which grey darkening (vignetting,
    uneven light, dust on the camera window) does not change.
    """
    red, green, blue = cv2.split(cv2.GaussianBlur(od, (0, 0), _TISSUE_SMOOTH_SIGMA))
    total = red + green + blue
    # |od|^2 - (od . g)^2 with g the unit grey axis: the squared distance from grey.
    chroma2 = red * red + green * green + blue * blue - total * total / 3.0
    return np.asarray(chroma2 > _TISSUE_CHROMA * _TISSUE_CHROMA)


def stain_amount(stains: StainMaps) -> np.ndarray:
    """Total stain OD per pixel: haematoxylin and DAB (negatives are noise) plus residual."""
    amount = np.maximum(stains.hematoxylin, 0.0) + np.maximum(stains.dab, 0.0)
    amount += stains.residual
    return amount.astype(np.float32, copy=False)


def residual_share(stains: StainMaps, amount: np.ndarray, mask: np.ndarray) -> float:
    """Median over ``mask`` of the residual OD as a share of the total stain OD (0..1)."""
    total = amount[mask]
    return float(np.median(stains.residual[mask] / np.maximum(total, 1e-6)))


def focus_measure(image: np.ndarray, mask: np.ndarray) -> float:
    """Fine- over coarse-scale RMS gradient on the strongest edges of ``image`` in ``mask``.

    About 2-4 for a sharp field, falling towards 1 as blur widens the edges; 0 when the
    image holds no detail. Sensor noise is estimated and its share removed at each scale.
    """
    img = image.astype(np.float32, copy=False)
    fine = _gradient_energy_map(img, _FOCUS_FINE_SIGMA)[mask]
    coarse = _gradient_energy_map(img, _FOCUS_COARSE_SIGMA)[mask]
    if coarse.size == 0:
        return 0.0
    # The strongest coarse-scale edges are tissue structure, not noise or JPEG blocking.
    k = max(1, int(coarse.size * _FOCUS_EDGE_SHARE))
    cut = np.partition(coarse, coarse.size - k)[coarse.size - k]
    edges = coarse >= cut
    noise_var = noise_sigma(img) ** 2
    fine_energy = float(fine[edges].mean()) - noise_var * _noise_gain(_FOCUS_FINE_SIGMA)
    coarse_energy = float(coarse[edges].mean()) - noise_var * _noise_gain(_FOCUS_COARSE_SIGMA)
    if coarse_energy <= 1e-12:  # flat, or nothing but noise: no detail to judge
        return 0.0
    return float(np.sqrt(max(fine_energy, 0.0) / coarse_energy))


def noise_sigma(image: np.ndarray) -> float:
    """Standard deviation of white noise in ``image`` (Immerkaer's kernel, median-based)."""
    response = cv2.filter2D(image.astype(np.float32, copy=False), -1, _NOISE_KERNEL,
                            borderType=cv2.BORDER_REFLECT)
    flat = np.abs(response).reshape(-1)
    # A median of 50 k values is as good as one of all, and several times cheaper.
    sample = flat[:: max(1, flat.size // _STATS_SAMPLE)]
    return float(np.median(sample)) * _MAD_TO_SIGMA / _NOISE_KERNEL_GAIN


def _gradient_energy_map(img: np.ndarray, sigma: float) -> np.ndarray:
    """Squared gradient magnitude (per pixel, units per pixel) of ``img`` smoothed at sigma."""
    smooth = cv2.GaussianBlur(img, (0, 0), sigma)
    # A 3x3 Sobel weighs the central difference by 8: scale to get units per pixel.
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
    return np.asarray(gx * gx + gy * gy)


@lru_cache(maxsize=8)
def _noise_gain(sigma: float) -> float:
    """Gradient energy that unit-variance white noise has after smoothing at ``sigma``."""
    size = 2 * int(np.ceil(4 * sigma)) + 7
    impulse = np.zeros((size, size), np.float32)
    impulse[size // 2, size // 2] = 1.0
    # The energy of the impulse response summed over all pixels is the noise gain.
    return float(_gradient_energy_map(impulse, sigma).sum())


def quality_issues(report: QualityReport, cfg: QualityConfig) -> list[QualityIssue]:
    """Fatal issues and warnings for a field, most fundamental first.

    When the light is wrong (black, fluorescence, far too dim) nothing else is judged; when
    there is no tissue, focus and stain colour are not judged either.
    """
    light = _illumination_issues(report, cfg)
    if any(i.fatal for i in light):
        return light
    issues = light + _over_exposure_issues(report, cfg)
    if report.tissue_fraction < cfg.min_tissue_fraction:
        issues.append(QualityIssue(
            "no_tissue",
            f"no tissue: stained tissue covers {report.tissue_fraction:.1%} of the field, "
            f"below {cfg.min_tissue_fraction:.1%} (her2.quality.min_tissue_fraction)",
            fatal=True,
        ))
        return issues
    return issues + _focus_issues(report, cfg) + _stain_issues(report, cfg)


# ---------------------------------------------------------------- exposure


def _exposure(rgb: np.ndarray, brightest: np.ndarray) -> tuple[float, float, float]:
    """Clipped fraction, near-black fraction and median brightness, on a subsample."""
    step = max(1, brightest.size // _STATS_SAMPLE)
    top = brightest.reshape(-1)[::step]
    pixels = rgb.reshape(-1, 3)[::step]
    # Channel sum in int32: a mean along the last axis of uint8 data is slow in numpy.
    total = pixels[:, 0].astype(np.int32) + pixels[:, 1] + pixels[:, 2]
    saturated = float(np.mean(top >= _CLIPPED_LEVEL))
    dark = float(np.mean(top < _NEAR_BLACK_LEVEL))
    brightness = float(np.median(total)) / 3.0
    return saturated, dark, brightness


def _mean_channel(image: np.ndarray) -> np.ndarray:
    """Mean over the three channels of a float image (cv2: avoids numpy's slow axis=2)."""
    red, green, blue = cv2.split(image)
    return np.asarray((red + green + blue) / np.float32(3.0))


def _channel_extreme(rgb: np.ndarray, op: Callable[..., np.ndarray]) -> np.ndarray:
    """Per-pixel max (or min) over R, G, B (cv2: far faster than numpy's axis=2 reduction)."""
    return np.asarray(op(op(rgb[..., 0], rgb[..., 1]), rgb[..., 2]))


# ---------------------------------------------------------------- gates


def _illumination_issues(report: QualityReport, cfg: QualityConfig) -> list[QualityIssue]:
    """Black, fluorescence-like or dim fields."""
    dark, bright = report.dark_fraction, report.brightness
    if dark >= _NOTHING_VISIBLE_DARK_FRACTION:
        return [QualityIssue(
            "under_exposed",
            f"the field is black ({dark:.0%} near-black pixels): lamp off, light path "
            "closed or exposure far too short",
            fatal=True,
        )]
    if dark > cfg.max_dark_fraction:
        return [QualityIssue(
            "not_brightfield",
            f"not a brightfield image: {dark:.0%} of the field is near-black background "
            f"(limit {cfg.max_dark_fraction:.0%}, her2.quality.max_dark_fraction) with "
            "brighter objects, as in fluorescence (or a brightfield field far too dark); "
            "switch to transmitted light",
            fatal=True,
        )]
    if bright < _MIN_BRIGHTNESS:
        return [QualityIssue(
            "under_exposed",
            f"under-exposed: median brightness {bright:.0f} of 255 is below "
            f"{_MIN_BRIGHTNESS:.0f}; raise the lamp or the exposure",
            fatal=True,
        )]
    if bright < _WARN_BRIGHTNESS:
        return [QualityIssue(
            "under_exposed",
            f"dim field: median brightness {bright:.0f} of 255; stain readings are noisier",
            fatal=False,
        )]
    return []


def _over_exposure_issues(report: QualityReport, cfg: QualityConfig) -> list[QualityIssue]:
    """Clipping: faint staining vanishes into the glass level and hues shift."""
    sat, limit = report.saturated_fraction, cfg.max_saturated_fraction
    if sat > limit:
        return [QualityIssue(
            "over_exposed",
            f"over-exposed: {sat:.0%} of pixels are clipped (limit {limit:.0%}, "
            "her2.quality.max_saturated_fraction); lower the lamp or the exposure",
            fatal=True,
        )]
    if sat > _WARN_SHARE_SATURATED * limit:
        return [QualityIssue(
            "over_exposed",
            f"partly over-exposed: {sat:.0%} of pixels are clipped; faint membrane "
            "staining may be under-read",
            fatal=False,
        )]
    return []


def _focus_issues(report: QualityReport, cfg: QualityConfig) -> list[QualityIssue]:
    """Blur smears membranes into the cytoplasm and lowers their measured DAB OD."""
    focus, limit = report.focus, cfg.min_focus
    if focus < limit:
        return [QualityIssue(
            "out_of_focus",
            f"out of focus: sharpness {focus:.2f} is below {limit:.2f} "
            "(her2.quality.min_focus); refocus on the tissue",
            fatal=True,
        )]
    if focus < _WARN_FOCUS_MARGIN * limit:
        return [QualityIssue(
            "out_of_focus",
            f"slightly soft focus: sharpness {focus:.2f}, close to the limit {limit:.2f}",
            fatal=False,
        )]
    return []


def _stain_issues(report: QualityReport, cfg: QualityConfig) -> list[QualityIssue]:
    """Colour that haematoxylin + DAB cannot explain: another stain or the wrong vectors."""
    residual, limit = report.stain_residual, cfg.max_stain_residual
    if residual > limit:
        return [QualityIssue(
            "wrong_stain",
            f"wrong stain: a median {residual:.0%} of the tissue's colour is not explained "
            f"by haematoxylin + DAB (limit {limit:.0%}, her2.quality.max_stain_residual); "
            "this does not look like an H-DAB stain (e.g. H&E or another chromogen)",
            fatal=True,
        )]
    if residual > _WARN_SHARE_RESIDUAL * limit:
        return [QualityIssue(
            "wrong_stain",
            f"unusual stain colour: {residual:.0%} of the tissue's colour is off the H-DAB "
            "plane; check the stain vectors (her2.stain) and the white balance",
            fatal=False,
        )]
    return []
