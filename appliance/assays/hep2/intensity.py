"""Fluorescence intensity of HEp-2 cells and specimens, in grey levels and calibrated units.

The definition (shared with the field generator, tools/synth/hep2_fields.py): a cell's
brightness is the mean of the brightest 5 % of its pixels minus the local background, in
8-bit grey levels of the green channel; the specimen intensity is the median over the
interphase cells. The brightest pixels, not the mean, because most patterns stain only part
of the cell (speckles, dots, nucleoli, cytoplasm around a dark nucleus): the mean would
read a centromere specimen as weaker than a homogeneous one of the same titre. A share of
the pixels, not the single maximum, so one hot pixel or a noise spike does not decide.

The background is estimated at a scale well above a cell (``background_map``): uneven
illumination (vignetting, an off-centre lamp) shifts the black level across the field, and
a single field-wide value would add that shift to the cells at the bright corner. The
same unevenness also scales the signal itself; the background cannot show that, so it is
the flat field's to correct (``light``, from flat_field.py).
"""

from __future__ import annotations

import cv2
import numpy as np

from appliance.config import Hep2CellsConfig, Hep2IntensityConfig

BRIGHTEST_SHARE = 0.05  # the contract's "brightest 5 % of the cell's pixels"
LEVELS = ("weak", "intermediate", "strong")
# The background window is this many nucleus diameters wide: wider than a whole HEp-2 cell
# (about two nucleus diameters), so an opening removes every cell, yet narrow enough to
# follow vignetting, which changes over hundreds of micrometres.
_BACKGROUND_WINDOW_NUCLEI = 4.0
# The background is estimated on a grid where a nucleus spans this many pixels: averaging
# the fine pixels first removes sensor noise, so the opening's minimum is not pulled down by
# noise, and the opening costs little on a 5-megapixel frame.
_COARSE_PX_PER_NUCLEUS = 6.0


def background_map(green: np.ndarray, um_per_px: float, cfg: Hep2CellsConfig) -> np.ndarray:
    """Smooth (H, W) float32 map of the dark background under and between the cells.

    A grey opening (erosion then dilation) with a disc wider than a cell, on a copy of the
    image averaged down to a coarse grid, then smoothed and brought back to full size.
    """
    _check_plane(green)
    if um_per_px <= 0:
        raise ValueError(f"um_per_px must be positive, got {um_per_px}")
    h, w = green.shape
    nucleus_px = cfg.nucleus_diameter_um / um_per_px
    factor = max(1.0, nucleus_px / _COARSE_PX_PER_NUCLEUS)
    cw, ch = max(1, round(w / factor)), max(1, round(h / factor))
    coarse = cv2.resize(green.astype(np.float32), (cw, ch), interpolation=cv2.INTER_AREA)
    k = 2 * round(_BACKGROUND_WINDOW_NUCLEI * _COARSE_PX_PER_NUCLEUS / 2) + 1
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    opened = cv2.morphologyEx(coarse, cv2.MORPH_OPEN, disc, borderType=cv2.BORDER_REPLICATE)
    # The opening is blocky (flat plateaus with steps); a blur of the same width smooths it.
    smooth = cv2.GaussianBlur(opened, (0, 0), k / 3.0, borderType=cv2.BORDER_REPLICATE)
    smooth = smooth + np.float32(_opening_bias(coarse - smooth))
    return np.asarray(cv2.resize(smooth, (w, h), interpolation=cv2.INTER_LINEAR), np.float32)


def _opening_bias(resid: np.ndarray) -> float:
    """How far the opening sits below the true background level (it keeps noise minima).

    The residual over the opening is that bias plus noise on the background, and large on
    the cells: the median over the pixels that are not clearly cells removes the bias.
    """
    flat = resid.reshape(-1)
    sigma = max(float(np.median(np.abs(flat - np.median(flat)))) * 1.4826, 1e-3)
    # Cells cover at most about half a field: the 25th percentile is background.
    rough = float(np.percentile(flat, 25))
    background = flat[flat < rough + 3.0 * sigma]
    return float(np.median(background)) if background.size else 0.0


def cell_brightness(green: np.ndarray, labels: np.ndarray,
                    background: np.ndarray | float,
                    light: np.ndarray | None = None) -> np.ndarray:
    """Brightness of every labelled cell: mean of its brightest 5 % minus its background.

    ``labels`` holds 0 for background and 1..n for the cells; the result has n entries, entry
    ``i`` for label ``i + 1`` (NaN for a label with no pixel). ``background`` is a map (the
    mean of the map over the cell's pixels is its local background) or one grey level.
    ``light``: the flat field's relative light (flat_field.gain_map); each cell's brightness
    is divided by the light's mean over the cell, as if the field were evenly lit.
    """
    _check_plane(green)
    if labels.shape != green.shape:
        raise ValueError(f"labels {labels.shape} do not match the image {green.shape}")
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return np.zeros(0, np.float64)
    inside = labels.reshape(-1) > 0
    lab = labels.reshape(-1)[inside].astype(np.int64)
    val = green.reshape(-1)[inside].astype(np.float64)
    top = _top_share_means(lab, val, n)
    above = top - _mean_under_cells(background, labels, lab, inside, n)
    if light is None:
        return above
    return np.asarray(above / _mean_under_cells(light, labels, lab, inside, n))


def field_brightness(green: np.ndarray, background: np.ndarray | float,
                     light: np.ndarray | None = None) -> float:
    """Whole-field fallback when no cell is found: the same definition over every pixel.

    A blank well reads close to 0 (the brightest 5 % of pure sensor noise sit about two
    noise standard deviations above the background), never NaN. ``light`` as for
    :func:`cell_brightness`, pixel by pixel.
    """
    _check_plane(green)
    resid = green.astype(np.float32) - np.asarray(background, np.float32)
    if light is not None:
        resid = resid / light
    flat = resid.reshape(-1)
    k = max(1, int(np.ceil(BRIGHTEST_SHARE * flat.size)))
    return float(np.partition(flat, flat.size - k)[flat.size - k:].mean())


def specimen_intensity(brightness: np.ndarray, interphase_mask: np.ndarray) -> float:
    """Median brightness of the interphase cells (metaphase plates are brighter in AC-1).

    Raises ValueError when no interphase cell has a brightness: the caller then uses
    :func:`field_brightness` and says so.
    """
    if brightness.shape != interphase_mask.shape:
        raise ValueError(f"brightness {brightness.shape} and interphase mask "
                         f"{interphase_mask.shape} differ in shape")
    values = brightness[interphase_mask.astype(bool)]
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("no interphase cell to measure the specimen intensity on")
    return float(np.median(values))


def to_units(grey: float, cfg: Hep2IntensityConfig) -> float:
    """Grey levels above background at the pinned exposure to calibrated units."""
    return float(grey) * cfg.units_per_grey


def intensity_level(units: float, cfg: Hep2IntensityConfig) -> str:
    """"negative" below ``negative_below``; above it weak, intermediate or strong.

    ``cfg.levels`` holds the two cut-offs from which a positive specimen is intermediate and
    strong; from ``negative_below`` up to the first it is weak.
    """
    levels = list(cfg.levels)
    if len(levels) != len(LEVELS) - 1 or levels != sorted(levels):
        raise ValueError(f"hep2.intensity.levels must be {len(LEVELS) - 1} ascending cut-offs "
                         f"(intermediate, strong), got {levels}")
    if not np.isfinite(units):
        raise ValueError(f"intensity {units} is not a finite number")
    if units < cfg.negative_below:
        return "negative"
    above = sum(units >= cut for cut in levels)
    return LEVELS[above]


def _top_share_means(lab: np.ndarray, val: np.ndarray, n: int) -> np.ndarray:
    """Per label 1..n: mean of the top BRIGHTEST_SHARE of its values (NaN when empty)."""
    # Sort by label, then by value descending: each label's brightest pixels come first.
    order = np.lexsort((-val, lab))
    lab, val = lab[order], val[order]
    counts = np.bincount(lab, minlength=n + 1)[1:]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    keep = np.maximum(1, np.rint(BRIGHTEST_SHARE * counts)).astype(np.int64)
    rank = np.arange(lab.size) - np.repeat(starts, counts)
    chosen = rank < np.repeat(keep, counts)
    sums = np.bincount(lab[chosen], weights=val[chosen], minlength=n + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / keep, np.nan)


def _mean_under_cells(values: np.ndarray | float, labels: np.ndarray, lab: np.ndarray,
                      inside: np.ndarray, n: int) -> np.ndarray | float:
    """Mean of a map (background, light) under each cell, or the one value given."""
    if np.ndim(values) == 0:
        return float(values)
    bg = np.asarray(values)
    if bg.shape != labels.shape:
        raise ValueError(f"map {bg.shape} does not match the labels {labels.shape}")
    counts = np.bincount(lab, minlength=n + 1)[1:]
    sums = np.bincount(lab, weights=bg.reshape(-1)[inside].astype(np.float64),
                       minlength=n + 1)[1:]
    return np.asarray(sums / np.maximum(counts, 1))


def _check_plane(green: np.ndarray) -> None:
    """An (H, W) single-channel image, or a clear error."""
    if green.ndim != 2 or green.size == 0:
        raise ValueError(f"expected an (H, W) green-channel image, got shape {green.shape}")
