"""HEp-2 cells in a fluorescence field: a classical segmentation (numpy and cv2 only).

1. Background: a grey opening wider than a cell on a coarse copy of the green channel
   (:func:`appliance.assays.hep2.intensity.background_map`), so uneven illumination does
   not move the threshold.
2. Foreground: the background-subtracted green, smoothed at about a sixth of a nucleus
   diameter and closed at a third of one, so speckles, dots, nucleoli and a cytoplasm
   around a dark nucleus merge into one generous blob per cell rather than many bright
   specks. The threshold is a share of Otsu's cut (between the cells and the background,
   whatever the specimen's strength), never below a floor of a few noise standard
   deviations of the smoothed image (a blank or negative field does not turn its noise
   into cells). Holes are filled.
3. Touching cells are split by a watershed on the distance transform, with one marker per
   distance maximum at least ~0.6 nucleus radius from any higher one.
4. An object larger than 2.5 times the field's median object (or than the area limit)
   is cut again at its own Otsu threshold, and split as in step 3. In a dense field the
   cells' stained cytoplasms or blurred rims touch, and at the field's cut they form
   sheets with no neck to split at; within the sheet the dimmer gaps between cells fall
   below its own cut.
5. Objects outside the configured area range (µm²) are dropped: debris and clumps.
6. Each object grows 0.1 nucleus diameter into the background (never into a neighbour), so
   the label covers the whole cell, on which the intensity is defined.

How well it finds and outlines the cells of each pattern is measured by
``python -m tools.eval_hep2_segmentation`` (docs/hep2.md has the table).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from appliance.assays.hep2.intensity import background_map
from appliance.assays.her2.cells import grow_cells
from appliance.assays.her2.quality import noise_sigma
from appliance.config import Hep2CellsConfig

# Smoothing before the threshold and closing after it, in nucleus diameters (see step 2).
_SMOOTH_NUCLEI = 1.0 / 6.0
_CLOSE_NUCLEI = 1.0 / 3.0
# Share of Otsu's cut used as the threshold: a generous mask keeps the dim rim of a cell
# (cytoplasm, the edge of a blurred nucleus) that Otsu's cut itself would shave off.
_OTSU_SHARE = 0.5
# The threshold never falls below this many standard deviations of the smoothed noise.
_NOISE_FLOOR_SIGMAS = 5.0
_MIN_FLOOR_GREY = 2.0  # a clean (noise-free) image still needs a step above its background
# Objects grow this many nucleus diameters into the background (not into a neighbour): most
# patterns stain the nucleus far more than the cytoplasm, and the cell, not the nucleus, is
# what the intensity is defined on (its brightest 5 % of pixels) and what a crop centres on.
_GROW_NUCLEI = 0.1
# An object this many times the field's median object is taken for two or more cells
# (cells of one field rarely differ twofold in area) and cut again; the median needs a
# few objects to mean anything.
_CLUMP_MEDIANS = 2.5
_CLUMP_MIN_OBJECTS = 5
# A re-cut object's parts grow back over it this far (nucleus diameters): the re-cut keeps
# the brighter core of each cell, the growth returns its dim rim.
_CLUMP_REGROW_NUCLEI = 0.3
# Markers: distance maxima at least this many nucleus radii apart, and at least this deep.
_MARKER_SEPARATION_RADII = 0.6
_MARKER_MIN_DEPTH_RADII = 0.25


@dataclass(frozen=True)
class Hep2Cells:
    """Cell instances of one field, in its pixels."""

    labels: np.ndarray  # (H, W) int32, 0 = background, 1..count
    count: int
    areas_px: np.ndarray  # (count,) int64, entry i for label i + 1
    centroids: np.ndarray  # (count, 2) float64 x, y
    bboxes: np.ndarray  # (count, 4) int32 x, y, width, height
    touches_edge: np.ndarray  # (count,) bool: cut by the picture's border
    background: float  # median background grey level (of the map) under the field
    background_map: np.ndarray  # (H, W) float32 background estimate the cells stand on


def segment_cells(green: np.ndarray, um_per_px: float, cfg: Hep2CellsConfig) -> Hep2Cells:
    """Segment the HEp-2 cells of a green-channel field ((H, W) grey levels 0..255)."""
    raw, bg, resid = _raw_foreground(green, um_per_px, cfg)
    radius_px = cfg.nucleus_diameter_um / (2.0 * um_per_px)
    min_px, max_px = cfg.min_area_um2 / um_per_px**2, cfg.max_area_um2 / um_per_px**2
    labels = split_touching(fill_holes(raw), radius_px)
    labels = split_clumps(labels, resid, radius_px, clump_limit(labels, min_px, max_px))
    labels = filter_by_area(labels, min_px, max_px)
    steps = round(_GROW_NUCLEI * cfg.nucleus_diameter_um / um_per_px)
    return describe(grow_cells(labels, np.zeros(labels.shape, bool), steps), bg)


def foreground_mask(green: np.ndarray, um_per_px: float,
                    cfg: Hep2CellsConfig) -> tuple[np.ndarray, np.ndarray]:
    """Cell pixels (bool, holes filled) and the background map they were measured against."""
    raw, bg, _resid = _raw_foreground(green, um_per_px, cfg)
    return fill_holes(raw), bg


def _raw_foreground(green: np.ndarray, um_per_px: float,
                    cfg: Hep2CellsConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell pixels before hole filling, the background map, and the smoothed residual
    (green minus background) the pixels were cut from."""
    if green.ndim != 2 or green.size == 0:
        raise ValueError(f"expected an (H, W) green-channel image, got shape {green.shape}")
    if not np.isfinite(um_per_px) or um_per_px <= 0:
        raise ValueError(f"um_per_px must be a positive number, got {um_per_px}")
    img = green.astype(np.float32, copy=False)
    bg = background_map(img, um_per_px, cfg)
    nucleus_px = cfg.nucleus_diameter_um / um_per_px
    sigma = max(0.7, _SMOOTH_NUCLEI * nucleus_px)
    resid = cv2.GaussianBlur(img - bg, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    floor = max(_MIN_FLOOR_GREY,
                _NOISE_FLOOR_SIGMAS * noise_sigma(img) * _smoothed_noise_share(sigma))
    cut = max(floor, _OTSU_SHARE * _otsu(resid, floor))
    mask = (resid > cut).astype(np.uint8)
    return _close(mask.astype(bool), nucleus_px), bg, resid


def _close(mask: np.ndarray, nucleus_px: float) -> np.ndarray:
    """``mask`` closed with a disc a third of a nucleus wide: the gaps of a speckled or
    ring-shaped stain close, so each cell is one blob."""
    k = 2 * round(_CLOSE_NUCLEI * nucleus_px / 2) + 1
    if k <= 1:
        return mask
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    return cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, disc).astype(bool)


def split_touching(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Label ``mask``'s objects, splitting touching cells at distance-transform necks."""
    m8 = mask.astype(np.uint8)
    if not m8.any():
        return np.zeros(mask.shape, np.int32)
    dist = cv2.distanceTransform(m8, cv2.DIST_L2, 5)
    # With no background pixel at all, OpenCV gives every pixel FLT_MAX; the flood's levels
    # would then never fall (a hang, found on a single-cell image that its margin did not
    # leave any background in). h + w exceeds any true distance: one flat object.
    np.minimum(dist, float(sum(mask.shape)), out=dist)
    # A light blur removes the ridge wiggles that a ragged outline adds (false maxima).
    dist = cv2.GaussianBlur(dist, (0, 0), max(1.0, 0.15 * radius_px))
    sep = max(1, round(_MARKER_SEPARATION_RADII * radius_px))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * sep + 1, 2 * sep + 1))
    depth = max(1.0, _MARKER_MIN_DEPTH_RADII * radius_px)
    peaks = (dist >= cv2.dilate(dist, kernel)) & (dist >= depth) & mask.astype(bool)
    _, markers = cv2.connectedComponents(peaks.astype(np.uint8), connectivity=8)
    labels = _flood_from_markers(markers.astype(np.int32), dist, mask.astype(bool))
    # Objects too thin or small for a marker keep a label of their own.
    _n_obj, objects = cv2.connectedComponents((mask & (labels == 0)).astype(np.uint8),
                                             connectivity=8)
    extra = objects > 0
    labels[extra] = objects[extra] + int(labels.max())
    return labels


def clump_limit(labels: np.ndarray, min_px: float, max_px: float) -> float:
    """The area (px) above which an object is taken for several cells and cut again.

    ``_CLUMP_MEDIANS`` times the median area of the objects within the area range, when
    there are enough of them to say what one cell is here, and never above ``max_px``.
    The median follows the objective and the cell line, which a fixed limit cannot.
    """
    area = np.bincount(labels.reshape(-1))[1:]
    cells = area[(area >= min_px) & (area <= max_px)]
    if cells.size < _CLUMP_MIN_OBJECTS:
        return max_px
    return min(max_px, _CLUMP_MEDIANS * float(np.median(cells)))


def split_clumps(labels: np.ndarray, resid: np.ndarray, radius_px: float,
                 limit_px: float) -> np.ndarray:
    """``labels`` with every object over ``limit_px`` pixels cut again at its own threshold.

    The object's pixels of ``resid`` (the smoothed, background-subtracted signal) are cut
    at their Otsu threshold, closed and hole-filled as the field's mask is, and split as
    :func:`split_touching` does. Each part then grows back over the object, up to 0.3
    nucleus diameter, and what it does not reach is left out. A flat object stays whole.
    What is still too large (one cell too large, or a true clump) is for the area filter
    to drop. Labels are not renumbered.
    """
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return labels
    area = np.bincount(labels.reshape(-1), minlength=n + 1)
    big = [int(i) for i in np.nonzero(area > limit_px)[0] if i > 0]
    if not big:
        return labels
    out = labels.copy()
    next_id = n + 1
    regrow = max(1, round(_CLUMP_REGROW_NUCLEI * 2.0 * radius_px))
    ys, xs = np.nonzero(np.isin(labels, big))
    lab = labels[ys, xs]
    for i in big:
        sel = lab == i
        y0, y1 = int(ys[sel].min()), int(ys[sel].max()) + 1
        x0, x1 = int(xs[sel].min()), int(xs[sel].max()) + 1
        region = labels[y0:y1, x0:x1] == i
        parts = _recut(region, resid[y0:y1, x0:x1], radius_px, regrow)
        window = out[y0:y1, x0:x1]  # a view: writes go to ``out``
        window[region] = 0
        inside = parts > 0
        window[inside] = parts[inside] + (next_id - 1)
        next_id += int(parts.max())
    return out


def _recut(region: np.ndarray, resid: np.ndarray, radius_px: float,
           regrow: int) -> np.ndarray:
    """The parts (labels 1..k) of one oversized object at its own Otsu threshold."""
    values = resid[region]
    lo, hi = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    if hi <= lo:
        return region.astype(np.int32)  # flat: nothing to cut at, it stays whole
    core = _close(region & (resid > _otsu_cut(values, lo, hi)), 2.0 * radius_px)
    parts = split_touching(fill_holes(core & region), radius_px)
    return grow_cells(parts, ~region, regrow)


def _flood_from_markers(markers: np.ndarray, dist: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A watershed by levels on the distance transform, grown by dilation (cv2 only).

    Fronts advance a pixel per step into mask pixels whose distance is at or above a level
    that falls half a pixel per step: deep pixels are claimed first, so two touching cells
    meet at the neck between them, and a front never jumps across the background.
    """
    # Every step is whole-picture work, so it is done in OpenCV on 8-bit masks and 16-bit
    # labels where they fit: the same result as numpy's boolean arrays, in less than half
    # the time (the flood was half of a HEp-2 field's segmentation).
    grown: npt.NDArray[np.uint16] | npt.NDArray[np.float32] = (
        markers.astype(np.uint16) if int(markers.max()) <= 0xFFFF
        else markers.astype(np.float32))  # float32 holds labels up to 2**24 exactly
    free = (mask & (markers == 0)).astype(np.uint8) * np.uint8(255)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    square = np.ones((3, 3), np.uint8)
    level, step = float(dist.max()), 0
    while True:
        reached = cv2.dilate(grown, cross if step % 2 else square)
        # OpenCV compares with a scalar; its type stubs only know arrays.
        new = cv2.bitwise_and(free, cv2.compare(reached, 0, cv2.CMP_GT))  # type: ignore[call-overload]
        new = cv2.bitwise_and(new, cv2.compare(dist, level, cv2.CMP_GE))  # type: ignore[call-overload]
        if level <= 0 and cv2.countNonZero(new) == 0:
            break
        cv2.copyTo(reached, new, grown)
        cv2.bitwise_and(free, cv2.bitwise_not(new), dst=free)
        level, step = level - 0.5, step + 1
    return grown.astype(np.int32)


def filter_by_area(labels: np.ndarray, min_px: float, max_px: float) -> np.ndarray:
    """Drop objects outside [min_px, max_px] and renumber the rest 1..n in label order."""
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return np.zeros(labels.shape, np.int32)
    area = np.bincount(labels.reshape(-1), minlength=n + 1)
    keep = (area >= min_px) & (area <= max_px)
    keep[0] = False
    new_id = np.zeros(n + 1, np.int32)
    new_id[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return new_id[labels]


def describe(labels: np.ndarray, bg: np.ndarray) -> Hep2Cells:
    """Areas, centroids, boxes and edge contact of labels 1..n."""
    n = int(labels.max()) if labels.size else 0
    h, w = labels.shape
    outside = labels == 0
    background = float(np.median(bg[outside])) if outside.any() else float(np.median(bg))
    if n == 0:
        return Hep2Cells(labels.astype(np.int32), 0, np.zeros(0, np.int64), np.zeros((0, 2)),
                         np.zeros((0, 4), np.int32), np.zeros(0, bool), background, bg)
    ys, xs = np.nonzero(labels)
    lab = labels[ys, xs]
    area = np.bincount(lab, minlength=n + 1)[1:].astype(np.int64)
    cx = np.bincount(lab, weights=xs, minlength=n + 1)[1:] / np.maximum(area, 1)
    cy = np.bincount(lab, weights=ys, minlength=n + 1)[1:] / np.maximum(area, 1)
    x0, y0 = _group_extreme(lab, xs, n, np.minimum), _group_extreme(lab, ys, n, np.minimum)
    x1, y1 = _group_extreme(lab, xs, n, np.maximum), _group_extreme(lab, ys, n, np.maximum)
    bboxes = np.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], axis=1).astype(np.int32)
    edge = (x0 == 0) | (y0 == 0) | (x1 == w - 1) | (y1 == h - 1)
    return Hep2Cells(labels.astype(np.int32), n, area, np.stack([cx, cy], axis=1), bboxes,
                     edge, background, bg)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every enclosed hole filled (a dark nucleus inside a stained cytoplasm)."""
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), np.uint8)
    padded[1:-1, 1:-1] = mask
    flood = padded.copy()
    ff_mask = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(flood, ff_mask, (0, 0), 1)  # reaches all background linked to the border
    holes = flood[1:-1, 1:-1] == 0
    return np.asarray(mask | holes)


def _group_extreme(lab: np.ndarray, values: np.ndarray, n: int,
                   op: np.ufunc) -> np.ndarray:
    """Per-label min or max of ``values`` (labels 1..n)."""
    init = np.iinfo(np.int64).max if op is np.minimum else -1
    out = np.full(n + 1, init, np.int64)
    op.at(out, lab, values)
    return out[1:]


def _otsu(resid: np.ndarray, floor: float) -> float:
    """Otsu's cut of the residual over [0, its 99.9th percentile] (0 when flat)."""
    top = float(np.percentile(resid, 99.9))
    if top <= floor:
        return 0.0  # nothing above the noise: no cells, the floor decides
    return _otsu_cut(resid, 0.0, top)


def _otsu_cut(values: np.ndarray, lo: float, hi: float) -> float:
    """Otsu's cut of ``values``, found on 8 bits spread over [lo, hi] (hi > lo)."""
    scaled = np.clip((values - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    t, _ = cv2.threshold(scaled.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return lo + float(t) * (hi - lo) / 255.0


def _smoothed_noise_share(sigma: float) -> float:
    """Standard deviation of white noise after a Gaussian blur of ``sigma`` px, per unit."""
    # The blur kernel's L2 norm: 1 / (2 sqrt(pi) sigma) in 2-D for sigma of a pixel or more.
    return float(min(1.0, 1.0 / (2.0 * np.sqrt(np.pi) * sigma)))
