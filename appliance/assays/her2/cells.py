"""From the model's class map to measured tumour cells (all at working scale).

1. Nucleus instances: the nucleus pixels (tumour + other) split at
   distance-transform peaks, each instance tumour when most of its pixels are.
2. Cells: every nucleus grows through cytoplasm until it meets stained membrane
   (``grow_cells``), at most ``membrane_reach_um``. A cell's membrane is the stained
   membrane within ``membrane_band_um`` beyond its cytoplasm, on either side of a
   border shared with a neighbour (one line between two cells is seen by both).
3. Per tumour cell: angular sectors around the nucleus centre; a sector is
   stained when it holds membrane pixels (model) with DAB OD at or above the
   faint threshold. Completeness is the stained fraction of the sectors (of the
   visible ones for a cell at the picture's edge); intensity is the median DAB
   OD of the stained membrane pixels. Nuclei cut by the picture's edge are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from appliance.config import MeasureConfig

BACKGROUND, TUMOUR_NUCLEUS, OTHER_NUCLEUS, MEMBRANE = 0, 1, 2, 3


@dataclass(frozen=True)
class Nuclei:
    """Nucleus instances at working scale."""

    labels: np.ndarray  # (H, W) int32, 0 = none, 1..n instances
    tumour: np.ndarray  # (n + 1,) bool, index = instance label (index 0 unused)


@dataclass(frozen=True)
class WorkingCell:
    """One measured tumour cell, in working-scale pixels."""

    label: int
    x: float
    y: float
    nucleus_area_px: int
    completeness: float
    intensity_od: float
    cytoplasm_od: float  # median DAB OD inside the cell, nucleus and membrane excepted
    outline: np.ndarray  # (K, 2) int32 points (x, y)


def class_map_from_logits(logits: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(C, h, w) logits at the model's output stride → (H, W) uint8 class map at ``shape``."""
    h, w = shape
    channels = [cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR) for c in logits]
    return np.argmax(np.stack(channels), axis=0).astype(np.uint8)


def _peaks(mask: np.ndarray, min_separation_px: int) -> tuple[int, np.ndarray]:
    """Distance-transform maxima inside ``mask`` (one marker per nucleus)."""
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    k = 2 * max(1, min_separation_px) + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    peaks = (dist >= cv2.dilate(dist, kernel)) & (dist >= 1.0) & mask
    # Plateau pixels of one nucleus are adjacent: merge them into one marker.
    n, markers = cv2.connectedComponents(peaks.astype(np.uint8), connectivity=8)
    return n - 1, markers


def nucleus_instances(classes: np.ndarray, *, min_area_px: int,
                      min_separation_px: int) -> Nuclei:
    """Split the nucleus pixels into instances and tell tumour nuclei from the others."""
    mask = (classes == TUMOUR_NUCLEUS) | (classes == OTHER_NUCLEUS)
    n_markers, markers = _peaks(mask, min_separation_px)
    if n_markers == 0:
        return Nuclei(np.zeros(classes.shape, np.int32), np.zeros(1, bool))
    # Each nucleus pixel joins its nearest marker (Voronoi over markers, inside the mask).
    _, nearest = cv2.distanceTransformWithLabels(
        (markers == 0).astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
    )
    marker_of_seed = np.concatenate([[0], markers.ravel()[np.flatnonzero(markers.ravel())]])
    labels = np.where(mask, marker_of_seed[nearest], 0).astype(np.int32)
    area = np.bincount(labels.ravel(), minlength=n_markers + 1)
    tumour_px = np.bincount(labels.ravel(), weights=(classes == TUMOUR_NUCLEUS).ravel(),
                            minlength=n_markers + 1)
    keep = area >= min_area_px
    keep[0] = False
    # Renumber the kept instances 1..n.
    new_id = np.zeros(n_markers + 1, np.int32)
    new_id[keep] = np.arange(1, int(keep.sum()) + 1)
    labels = new_id[labels]
    tumour = np.concatenate([[False], (tumour_px[keep] * 2 > area[keep])])
    return Nuclei(labels, tumour)


def grow_cells(labels: np.ndarray, barrier: np.ndarray, steps: int) -> np.ndarray:
    """Grow every nucleus outwards through cytoplasm, stopping at membranes.

    A geodesic growth (one pixel per step, alternating 8- and 4-neighbourhoods so the
    front is nearly round) that may not enter ``barrier`` pixels: each cell fills its
    own cytoplasm up to its membrane, whatever the sizes of the neighbouring nuclei,
    and unstained cells meet their neighbours halfway. Where fronts meet, the higher
    label wins; that moves a border by a pixel at most.
    """
    grown = labels.astype(np.float32)  # float32 holds labels up to 2**24 exactly
    free = ~barrier & (labels == 0)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    square = np.ones((3, 3), np.uint8)
    for step in range(steps):
        reached = cv2.dilate(grown, cross if step % 2 else square)
        new = free & (reached > 0)
        if not new.any():
            break
        grown[new] = reached[new]
        free &= ~new
    return grown.astype(np.int32)


def measure_cells(nuclei: Nuclei, membrane: np.ndarray, dab: np.ndarray, *,
                  um_per_px: float, cfg: MeasureConfig) -> list[WorkingCell]:
    """Completeness and intensity of every tumour cell's membrane."""
    labels = nuclei.labels
    if labels.max() == 0:
        return []
    reach = cfg.membrane_reach_um / um_per_px
    cells_map = grow_cells(labels, membrane, int(np.ceil(reach)))
    band = max(1, round(cfg.membrane_band_um / um_per_px))
    stained_px = membrane & (dab >= cfg.intensity_thresholds[0])
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
    h, w = labels.shape
    pad = int(np.ceil(reach)) + band + 1
    cells: list[WorkingCell] = []
    boxes = _bounding_boxes(labels)
    for label in (int(v) for v in np.flatnonzero(nuclei.tumour)):
        y0, y1, x0, x1 = boxes[label]
        if y0 == 0 or x0 == 0 or y1 == h or x1 == w:
            continue  # a nucleus cut by the picture's edge: centre and size are unknown
        y0, x0 = max(0, y0 - pad), max(0, x0 - pad)
        y1, x1 = min(h, y1 + pad), min(w, x1 + pad)
        nucleus = labels[y0:y1, x0:x1] == label
        own = cells_map[y0:y1, x0:x1] == label
        # The membrane just beyond the cell's cytoplasm, on either side of a shared border.
        ring = cv2.dilate(own.astype(np.uint8), kernel).astype(bool) & ~own
        ys, xs = np.nonzero(nucleus)
        cy, cx = ys.mean(), xs.mean()
        cell = _measure_one(ring, stained_px[y0:y1, x0:x1], dab[y0:y1, x0:x1],
                            (cy, cx), (y0, x0), (h, w), cfg)
        if cell is None:
            continue
        completeness, intensity = cell
        if completeness < cfg.min_membrane_fraction:
            completeness, intensity = 0.0, 0.0
        inside = own & ~nucleus & ~membrane[y0:y1, x0:x1]
        cytoplasm = float(np.median(dab[y0:y1, x0:x1][inside])) if inside.any() else 0.0
        cells.append(WorkingCell(
            label=label, x=float(cx + x0), y=float(cy + y0), nucleus_area_px=len(ys),
            completeness=completeness, intensity_od=intensity, cytoplasm_od=cytoplasm,
            outline=_outline(own, (x0, y0)),
        ))
    return cells


def _bounding_boxes(labels: np.ndarray) -> dict[int, tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of every instance, exclusive ends."""
    boxes: dict[int, tuple[int, int, int, int]] = {}
    ys, xs = np.nonzero(labels)
    ids = labels[ys, xs]
    order = np.argsort(ids, kind="stable")
    ids, ys, xs = ids[order], ys[order], xs[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    for s, e in zip(starts, ends, strict=True):
        boxes[int(ids[s])] = (int(ys[s:e].min()), int(ys[s:e].max()) + 1,
                              int(xs[s:e].min()), int(xs[s:e].max()) + 1)
    return boxes


def _measure_one(ring: np.ndarray, stained: np.ndarray, dab: np.ndarray,
                 centre: tuple[float, float], origin: tuple[int, int],
                 shape: tuple[int, int], cfg: MeasureConfig) -> tuple[float, float] | None:
    """(completeness, intensity OD) of one cell, or None when too little of it is visible."""
    bins = cfg.angular_bins
    ys, xs = np.nonzero(ring)
    if len(ys) == 0:
        return None
    angle = np.arctan2(ys - centre[0], xs - centre[1])
    sector = ((angle + np.pi) * (bins / (2 * np.pi))).astype(np.int32) % bins
    observed = np.bincount(sector, minlength=bins) > 0
    if not _touches_edge(ys + origin[0], xs + origin[1], shape):
        # Inside the picture every sector counts, even one a neighbour squeezes to nothing.
        observed[:] = True
    elif observed.mean() < cfg.min_observed_fraction:
        return None  # cut by the picture's edge: its circumference cannot be judged
    on = stained[ys, xs]
    if not on.any():
        return 0.0, 0.0
    covered = np.bincount(sector[on], minlength=bins) > 0
    completeness = float(covered.sum() / observed.sum())
    # The median over stained pixels: a sector's maximum would follow the noise upwards.
    return min(1.0, completeness), float(np.median(dab[ys[on], xs[on]]))


def _touches_edge(ys: np.ndarray, xs: np.ndarray, shape: tuple[int, int]) -> bool:
    return bool(ys.min() == 0 or xs.min() == 0 or ys.max() == shape[0] - 1
                or xs.max() == shape[1] - 1)


def _outline(region: np.ndarray, origin: tuple[int, int]) -> np.ndarray:
    """The outer contour of a cell, simplified, in working-scale image coordinates."""
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.zeros((0, 2), np.int32)
    largest = max(contours, key=cv2.contourArea)
    simple = cv2.approxPolyDP(largest, 1.0, True).reshape(-1, 2)
    return (simple + np.asarray(origin, np.int32)).astype(np.int32)
