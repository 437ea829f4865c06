"""Classical reference pipeline for the HER2 benchmark, of the kind QuPath users run.

Stages, each timed (``timings_ms``):

1. **deconvolution** — scikit-image :func:`skimage.color.rgb2hed` (Ruifrok & Johnston 2001),
   converted to base-10 optical density of a unit stain vector (see :func:`deconvolve`).
2. **nuclei** — Otsu threshold on the smoothed, background-subtracted haematoxylin OD (never
   below QuPath's default 0.1 OD), distance transform, :func:`skimage.feature.peak_local_max`
   seeds and :func:`skimage.segmentation.watershed`; then a nucleus size / shape filter in µm².
3. **rings** — cell expansion with :func:`skimage.segmentation.expand_labels` (a few µm,
   stopping halfway to the next nucleus, as QuPath's cell expansion does); the ring is the
   expansion minus the nucleus and a 1 µm band around it. In each of ``angular_bins``
   sectors around the nucleus centre the peak DAB OD is the membrane there.
4. **rules** — per cell: intensity = mean peak DAB OD of the stained sectors, completeness =
   fraction of sectors whose peak reaches the faint threshold (0.2 / 0.4 / 0.6 OD, QuPath's
   positive-cell-detection defaults, taken from :class:`MeasureConfig`); then the product's
   own rule engine (:func:`classify_cell`, :func:`score_field`).

Why it is only a baseline: there is no tumour / non-tumour classifier here — every nucleus
that passes a size (tumour nuclei are about 50-150 µm²) and shape (solid, not spindle-shaped)
filter counts as a tumour cell, so lymphocytes of the right size, stromal and normal
epithelial cells leak into the percentages; a ring of fixed width misses membranes of cells
much larger than assumed; and the white level is one per field (the brightest pixels, as a
QuPath user would set from glass), so vignetting and uneven light, which a cheap eyepiece
camera has, still read as stain towards the corners, and a field without glass gets a white
level that is really pale tissue.

This module belongs to ``tools/`` and may use scikit-image and SciPy; the appliance itself
does not import it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi
from skimage.color import rgb2hed, rgb_from_hed
from skimage.feature import peak_local_max
from skimage.filters import gaussian, threshold_otsu
from skimage.segmentation import expand_labels, watershed

from appliance.assays.her2.rules import classify_cell, score_field
from appliance.assays.her2.types import FieldScore, MembraneClass, NotScorable
from appliance.config import MeasureConfig, RulesConfig

FloatImage = NDArray[np.float64]
LabelImage = NDArray[np.int32]

# rgb2hed (skimage 0.19+) computes  c = (ln(max(rgb/255, 1e-6)) / ln(1e-6)) @ inv(M),
# where M = rgb_from_hed holds the Ruifrok-Johnston vectors as rows, not quite unit length.
# ln(x) / ln(1e-6) = log10(x) / -6 = OD10 / 6, so OD10 = 6 * c @ M, and the amount of stain k
# along its *unit* vector (the unit our thresholds are in) is 6 * |M_k| * c_k.
_SKIMAGE_OD_SCALE = -math.log10(1e-6)  # = 6
H_OD_PER_UNIT: float = _SKIMAGE_OD_SCALE * float(np.linalg.norm(rgb_from_hed[0]))
DAB_OD_PER_UNIT: float = _SKIMAGE_OD_SCALE * float(np.linalg.norm(rgb_from_hed[2]))


@dataclass(frozen=True)
class ClassicalParams:
    """Settings of the classical pipeline that have no counterpart in :class:`MeasureConfig`."""

    # Glass brightness 1..255 for every channel; 0 = estimate per field from the brightest
    # ``white_percent`` of the pixels (a grey offset in OD leaks into DAB, so this matters).
    white_level: float = 0.0
    white_percent: float = 1.0
    min_nucleus_um2: float = 30.0  # below: debris; a 7 µm lymphocyte (~38 µm²) still passes
    max_nucleus_um2: float = 250.0  # above: merged clumps the watershed did not split
    min_solidity: float = 0.78  # ragged objects are clumps or precipitate (contour polygons)
    min_axis_ratio: float = 0.3  # minor / major axis; spindle-shaped stromal nuclei fall below
    min_h_od: float = 0.1  # QuPath's usual nucleus threshold, a floor for Otsu
    background_um: float = 8.0  # QuPath's usual background radius (grey opening)
    # Gaussian sigma before thresholding; QuPath's usual 1.5 µm blurs 0.5 µm/px nuclei together.
    smooth_um: float = 0.5
    seed_distance_um: float = 3.0  # closest two nucleus seeds may be
    ring_um: float = 5.0  # cell expansion where the membrane is sought (QuPath's default)
    ring_gap_um: float = 1.0  # band next to the nucleus left out of the ring
    # Sigma on DAB before the sector peaks: enough to stop one noisy pixel making a peak, small
    # enough not to flatten a 1+ membrane (about 0.6 µm wide); 0 turns it off.
    membrane_smooth_um: float = 0.25


@dataclass(frozen=True)
class ClassicalCell:
    """One cell found by the classical pipeline (pixel coordinates of the input image)."""

    x: float
    y: float
    area_px: float  # nucleus area
    intensity_od: float  # mean peak DAB OD of the stained sectors; 0 when none is stained
    completeness: float  # fraction of sectors with DAB OD at or above the faint threshold
    membrane_class: MembraneClass


@dataclass(frozen=True)
class ClassicalResult:
    """Cells, field score and per-stage timings of one field."""

    cells: tuple[ClassicalCell, ...]
    score: FieldScore | NotScorable
    timings_ms: dict[str, float]


@dataclass(frozen=True)
class Nuclei:
    """Kept nuclei: their label image (1..n, 0 = none) and per-label centre and area."""

    labels: LabelImage
    cx: NDArray[np.float64]
    cy: NDArray[np.float64]
    area_px: NDArray[np.float64]


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[stage] = (time.perf_counter() - start) * 1000.0


def _check_input(rgb: np.ndarray, um_per_px: float) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = getattr(rgb, "shape", None)
        raise ValueError(f"classical HER2 needs an H x W x 3 RGB array, got shape {shape}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"classical HER2 needs 8-bit RGB (uint8), got {rgb.dtype}")
    if min(rgb.shape[:2]) < 8:
        raise ValueError(f"image of {rgb.shape[1]}x{rgb.shape[0]} px is too small to segment")
    if not (math.isfinite(um_per_px) and um_per_px > 0):
        raise ValueError(f"um_per_px must be a positive finite number, got {um_per_px!r}")


def estimate_white(rgb: np.ndarray, params: ClassicalParams) -> NDArray[np.float64]:
    """Per-channel RGB of unstained glass: the median of the brightest pixels of the field.

    A QuPath user sets this by clicking on glass ("background" in Estimate stain vectors);
    a fixed ``white_level`` reproduces rgb2hed's and QuPath's default of 255 instead.
    """
    if params.white_level > 0:
        return np.full(3, params.white_level, dtype=np.float64)
    brightness = rgb.sum(axis=2, dtype=np.int32)
    cut = np.percentile(brightness, 100.0 - params.white_percent)
    white = np.median(rgb[brightness >= cut], axis=0).astype(np.float64)
    return np.maximum(white, 1.0)  # a black channel would divide by zero below


def deconvolve(rgb: np.ndarray,
               white: NDArray[np.float64] | None = None) -> tuple[FloatImage, FloatImage]:
    """Haematoxylin and DAB as base-10 OD of unit Ruifrok-Johnston vectors, via ``rgb2hed``.

    ``white`` is the RGB of glass (default 255, rgb2hed's own); the image is divided by it
    first, so a dim or tinted camera does not read as stain.
    """
    scaled = rgb if white is None else np.clip(rgb / white, 0.0, 1.0)
    hed = rgb2hed(scaled)
    return hed[..., 0] * H_OD_PER_UNIT, hed[..., 2] * DAB_OD_PER_UNIT


def nucleus_mask(h_od: FloatImage, um_per_px: float, params: ClassicalParams) -> np.ndarray:
    """Nucleus foreground: smoothed haematoxylin minus its background, Otsu-thresholded.

    The background is a grey opening of radius ``background_um`` (QuPath's "background
    radius"): without it Otsu lands in the pale haematoxylin of stroma and cytoplasm and
    whole glands become one object. The threshold never drops below ``min_h_od``.
    """
    smooth = gaussian(h_od, sigma=params.smooth_um / um_per_px).astype(np.float32)
    radius = max(1, round(params.background_um / um_per_px))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    foreground = smooth - cv2.morphologyEx(smooth, cv2.MORPH_OPEN, disk)
    if float(foreground.max()) <= params.min_h_od:
        return np.zeros(h_od.shape, dtype=bool)  # nothing as dark as a nucleus: empty field
    # Otsu alone would split glass noise from faint cytoplasm on a field without nuclei.
    threshold = max(float(threshold_otsu(foreground)), params.min_h_od)
    mask: np.ndarray = ndi.binary_fill_holes(foreground > threshold)
    return mask


def split_nuclei(mask: np.ndarray, um_per_px: float, params: ClassicalParams) -> LabelImage:
    """Watershed of the distance transform from its local maxima: touching nuclei apart."""
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.int32)
    distance = ndi.distance_transform_edt(mask)
    # A light blur merges the ridge of plateaus so one nucleus gives one seed.
    distance = ndi.gaussian_filter(distance, sigma=1.0)
    min_distance = max(1, round(params.seed_distance_um / um_per_px))
    # Over the whole image, not per component (peak_local_max's labels= loops in Python);
    # a component whose seed lost to a brighter neighbour's gets its own maximum back below.
    peaks = peak_local_max(distance, min_distance=min_distance, exclude_border=False)
    peaks = peaks[mask[tuple(peaks.T)]]
    components, n_components = ndi.label(mask)
    missing = np.setdiff1d(np.arange(1, n_components + 1), components[tuple(peaks.T)])
    if len(missing):
        extra = np.array(ndi.maximum_position(distance, components, missing), dtype=np.intp)
        peaks = np.concatenate([peaks, extra.reshape(-1, 2)])
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    labels: LabelImage = watershed(-distance, markers, mask=mask).astype(np.int32)
    return labels


def _shape_moments(labels: LabelImage) -> tuple[NDArray[np.float64], ...]:
    """Per label 0..max: pixel count, centre (x, y) and minor / major axis ratio."""
    ys, xs = np.nonzero(labels)
    lab = labels[ys, xs]
    size = int(labels.max()) + 1
    count = np.bincount(lab, minlength=size).astype(np.float64)
    safe = np.maximum(count, 1.0)

    def mean(values: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.bincount(lab, weights=values, minlength=size) / safe

    cx, cy = mean(xs.astype(np.float64)), mean(ys.astype(np.float64))
    # Central second moments, vectorised over labels (regionprops' inertia tensor is per
    # region in Python and was most of this stage's time).
    dx, dy = xs - cx[lab], ys - cy[lab]
    sxx, syy, sxy = mean(dx * dx), mean(dy * dy), mean(dx * dy)
    half_trace = (sxx + syy) / 2
    root = np.sqrt(((sxx - syy) / 2) ** 2 + sxy**2)
    ratio = np.sqrt(np.maximum(half_trace - root, 0.0) / np.maximum(half_trace + root, 1e-12))
    return count, cx, cy, ratio


def _touching_border(labels: LabelImage) -> NDArray[np.int32]:
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return np.unique(edge[edge > 0]).astype(np.int32)


def _solidity(region: np.ndarray) -> float:
    """Area over convex-hull area of one region (a boolean crop), both as contour polygons."""
    # A one-pixel frame keeps the contour off the crop's edge.
    canvas = np.pad(region.astype(np.uint8), 1)
    contours, _ = cv2.findContours(canvas, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    hull_area = cv2.contourArea(cv2.convexHull(np.concatenate(contours)))
    if hull_area <= 0:
        return 1.0  # a line of pixels has no area to compare; the axis ratio rejects it
    return float(sum(cv2.contourArea(c) for c in contours) / hull_area)


def filter_nuclei(labels: LabelImage, um_per_px: float, params: ClassicalParams) -> Nuclei:
    """Keep nuclei of tumour size and shape that do not touch the border; relabel 1..n."""
    count, cx, cy, ratio = _shape_moments(labels)
    area_um2 = count * um_per_px**2
    keep = ((area_um2 >= params.min_nucleus_um2) & (area_um2 <= params.max_nucleus_um2)
            & (ratio >= params.min_axis_ratio))
    keep[0] = False
    # A nucleus cut by the border has a ring cut too: its circumference cannot be judged.
    keep[_touching_border(labels)] = False
    boxes = ndi.find_objects(labels)
    for label in np.flatnonzero(keep):
        # Solidity needs a convex hull per region: only for the few that passed the rest.
        box = boxes[label - 1]
        if box is not None and _solidity(labels[box] == label) < params.min_solidity:
            keep[label] = False
    lut = np.zeros(len(keep), dtype=np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return Nuclei(labels=lut[labels], cx=cx[keep], cy=cy[keep], area_px=count[keep])


def membrane_rings(nuclei: LabelImage, ring_px: float, gap_px: float) -> LabelImage:
    """Each nucleus's expansion by ``ring_px`` (halfway to a neighbour at most), minus the
    nucleus grown by ``gap_px``.

    The gap keeps the nucleus's own edge out: haematoxylin that the fixed stain vectors do
    not fully separate, blurred by the optics, would otherwise read as a faint membrane.
    """
    expanded: LabelImage = expand_labels(nuclei, distance=ring_px).astype(np.int32)
    inner: np.ndarray = (nuclei > 0).astype(np.uint8)
    radius = round(gap_px)
    if radius > 0:
        disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        inner = cv2.dilate(inner, disk)
    expanded[inner > 0] = 0
    return expanded


def sector_peaks(rings: LabelImage, dab_od: FloatImage, nuclei: Nuclei,
                 bins: int) -> NDArray[np.float64]:
    """Peak DAB OD per (cell, angular sector) in the ring; NaN where a sector has no pixel."""
    n = len(nuclei.cx)
    ys, xs = np.nonzero(rings)
    idx = rings[ys, xs] - 1
    angle = np.arctan2(ys - nuclei.cy[idx], xs - nuclei.cx[idx])  # -pi..pi
    sector = np.floor((angle + np.pi) / (2 * np.pi) * bins).astype(np.int64) % bins
    peaks = np.full(n * bins, -np.inf)
    np.maximum.at(peaks, idx * bins + sector, dab_od[ys, xs])
    peaks[np.isneginf(peaks)] = np.nan
    return peaks.reshape(n, bins)


def membrane_measures(peaks: NDArray[np.float64],
                      faint_od: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per cell: mean peak OD of stained sectors (0 if none) and the stained fraction.

    A sector without ring pixels (squeezed by a neighbour) counts as unstained: the membrane
    there was not seen, so it cannot make the cell complete.
    """
    stained = np.nan_to_num(peaks, nan=-np.inf) >= faint_od
    count = stained.sum(axis=1)
    total = np.where(stained, peaks, 0.0).sum(axis=1)
    intensity = np.divide(total, count, out=np.zeros(len(peaks)), where=count > 0)
    completeness = count / peaks.shape[1] if peaks.shape[1] else np.zeros(len(peaks))
    return intensity, completeness


def _cells(nuclei: Nuclei, intensity: NDArray[np.float64], completeness: NDArray[np.float64],
           measure: MeasureConfig) -> tuple[ClassicalCell, ...]:
    cells = []
    for i in range(len(nuclei.cx)):
        _, membrane_class = classify_cell(float(intensity[i]), float(completeness[i]), measure)
        cells.append(ClassicalCell(
            x=float(nuclei.cx[i]), y=float(nuclei.cy[i]), area_px=float(nuclei.area_px[i]),
            intensity_od=float(intensity[i]), completeness=float(completeness[i]),
            membrane_class=membrane_class,
        ))
    return tuple(cells)


def score_classical(rgb: np.ndarray, um_per_px: float, *, measure: MeasureConfig | None = None,
                    rules: RulesConfig | None = None,
                    params: ClassicalParams | None = None) -> ClassicalResult:
    """Score one H-DAB field the classical way; every nucleus kept counts as a tumour cell.

    ``rgb`` is an H x W x 3 uint8 image; ``um_per_px`` its pixel size at the specimen.
    Thresholds, sector count and the rules come from ``measure`` / ``rules`` (defaults of
    :mod:`appliance.config` when omitted). Raises ``ValueError`` naming the problem for an
    input that is not 8-bit RGB or a pixel size that is not positive.
    """
    _check_input(rgb, um_per_px)
    measure = measure or MeasureConfig()
    rules = rules or RulesConfig()
    params = params or ClassicalParams()
    timings: dict[str, float] = {}
    with _timed(timings, "deconvolution"):
        h_od, dab_od = deconvolve(rgb, estimate_white(rgb, params))
    with _timed(timings, "nuclei"):
        mask = nucleus_mask(h_od, um_per_px, params)
        nuclei = filter_nuclei(split_nuclei(mask, um_per_px, params), um_per_px, params)
    with _timed(timings, "rings"):
        rings = membrane_rings(nuclei.labels, params.ring_um / um_per_px,
                               params.ring_gap_um / um_per_px)
        sigma = params.membrane_smooth_um / um_per_px
        dab_smooth = gaussian(dab_od, sigma=sigma) if sigma > 0 else dab_od
        peaks = sector_peaks(rings, dab_smooth, nuclei, measure.angular_bins)
        intensity, completeness = membrane_measures(peaks, measure.intensity_thresholds[0])
    with _timed(timings, "rules"):
        cells = _cells(nuclei, intensity, completeness, measure)
        score = score_field([c.membrane_class for c in cells], rules)
    timings["total"] = sum(timings.values())
    return ClassicalResult(cells=cells, score=score, timings_ms=timings)

