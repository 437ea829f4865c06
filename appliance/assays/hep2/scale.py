"""The scale of a HEp-2 field (µm per pixel) from its cells, where nothing declares it.

HEp-2 cells are a cell line of fairly even size, which makes them their own ruler. But what
the segmentation outlines depends on the pattern: in a nuclear pattern a nucleus, in a
cytoplasmic one the whole cell (its nucleus a dark hole), so the ruler's length depends on
which of the two the objects are. Each whole object says so itself: the mean of its core
against its brightest pixels (``core_ratios``) is about 1 for a stained nucleus and well
under 1 for a ring of cytoplasm or nuclear envelope around a dark middle. The diameter a
field's median object stands for is read from the field's median core ratio:

    log(diameter_um) = _LOG_DIAMETER + _LOG_DIAMETER_PER_RATIO * clip(ratio, 0.3, 1.0)

that is 25.7 µm for ring-like objects (ratio 0.3) down to 17.4 µm for solid ones (1.0).
The two constants were fitted on 126 generated tuning fields (seeds 620000+, every pattern
and negatives, 10x to 40x, segmented at their true scale); the held-out figures are in
docs/hep2.md ("Scale"). A declared objective needs none of this and is always better.
"""

from __future__ import annotations

import cv2
import numpy as np

from appliance.assays.hep2.segmentation import Hep2Cells, segment_cells
from appliance.assays.her2.assay import ScaleInfo
from appliance.config import Hep2CellsConfig

# HEp-2 cells are 15-25 µm across; a single-cell image's mask is taken for a cell this wide.
ASSUMED_CELL_DIAMETER_UM = 20.0
PROVISIONAL_UM_PER_PX = 0.5  # before the estimate (about a 20x objective)
_PLAUSIBLE_UM_PER_PX = (0.15, 2.0)
_MIN_CELLS = 5
_ROUNDS = 3  # segment again at each estimate: splitting and size filters follow the scale
# The fitted object diameter by core ratio (module docstring).
_LOG_DIAMETER = 3.413
_LOG_DIAMETER_PER_RATIO = -0.556
_RATIO_RANGE = (0.3, 1.0)
_CORE_DEPTH = 0.6  # the core: pixels at least this share of the object's inradius deep
_MIN_INRADIUS_PX = 3.0  # smaller objects have no core to speak of
_SMOOTH_UM = 0.5  # the residual is smoothed this much before the core is measured


def core_ratios(green: np.ndarray, cells: Hep2Cells, um_per_px: float) -> np.ndarray:
    """Per whole object: the mean of its core over its 90th percentile, both above the
    background (about 1 for a stained nucleus, well under 1 for a ring)."""
    resid = cv2.GaussianBlur(green.astype(np.float32) - cells.background_map, (0, 0),
                             max(0.7, _SMOOTH_UM / um_per_px))
    out = []
    for i in range(cells.count):
        if cells.touches_edge[i]:
            continue
        x, y, w, h = (int(v) for v in cells.bboxes[i])
        padded = np.pad(cells.labels[y:y + h, x:x + w] == i + 1, 1)
        dist = cv2.distanceTransform(padded.astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
        own = padded[1:-1, 1:-1]
        depth = float(dist.max())
        if depth < _MIN_INRADIUS_PX:
            continue
        values = resid[y:y + h, x:x + w]
        top = float(np.percentile(values[own], 90.0))
        if top <= 0:
            continue
        out.append(float(values[dist >= _CORE_DEPTH * depth].mean()) / top)
    return np.asarray(out, np.float64)


def object_diameter_um(core_ratio: float) -> float:
    """The diameter (µm) a field's median whole object stands for, by its core ratio."""
    lo, hi = _RATIO_RANGE
    x = min(hi, max(lo, core_ratio))
    return float(np.exp(_LOG_DIAMETER + _LOG_DIAMETER_PER_RATIO * x))


def estimate_scale(green: np.ndarray, cfg: Hep2CellsConfig) -> ScaleInfo:
    """µm/px from the median size of the whole objects, each field's objects taken for
    nuclei or whole cells as their cores say (module docstring). Fewer than 5 whole
    objects: the provisional scale, with a warning."""
    um = PROVISIONAL_UM_PER_PX
    found = 0
    for _ in range(_ROUNDS):
        cells = segment_cells(green, um, cfg)
        whole = cells.areas_px[~cells.touches_edge] if cells.count else np.zeros(0)
        found = int(whole.size)
        if found < _MIN_CELLS:
            break
        ratios = core_ratios(green, cells, um)
        reference = object_diameter_um(float(np.median(ratios)) if ratios.size else 1.0)
        diameter_px = float(np.sqrt(4.0 * np.median(whole) / np.pi))
        um = reference / max(diameter_px, 1.0)
    lo, hi = _PLAUSIBLE_UM_PER_PX
    if found < _MIN_CELLS:
        return ScaleInfo(PROVISIONAL_UM_PER_PX, "assumed", (
            f"scale unknown: too few cells to estimate it; assumed {PROVISIONAL_UM_PER_PX} "
            "um/px (set optics.objective or optics.um_per_px)",))
    # Why the warning insists: even so the estimate is within 25% in only part of the
    # fields (docs/hep2.md, "Scale"); a declared objective has no such error.
    warnings = [f"scale estimated from cell size: {um:.2f} um/px, which may be off by a "
                "quarter or more; set the objective (optics.objective or the set_objective "
                "command) for a reliable reading"]
    if not lo <= um <= hi:
        warnings.append(f"estimated scale {um:.2f} um/px is implausible; clamped")
        um = min(hi, max(lo, um))
    return ScaleInfo(um, "estimated", tuple(warnings))
