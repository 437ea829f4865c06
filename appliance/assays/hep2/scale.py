"""The scale of a HEp-2 field (µm per pixel) from its cells, where nothing declares it.

HEp-2 cells are a cell line of fairly even size, which makes them their own ruler.
"""

from __future__ import annotations

import numpy as np

from appliance.assays.hep2.segmentation import segment_cells
from appliance.assays.her2.assay import ScaleInfo
from appliance.config import Hep2CellsConfig

# HEp-2 cells are 15-25 µm across; the scale estimates assume the median whole cell is this.
ASSUMED_CELL_DIAMETER_UM = 20.0
PROVISIONAL_UM_PER_PX = 0.5  # before the estimate (about a 20x objective)
_PLAUSIBLE_UM_PER_PX = (0.15, 2.0)
_MIN_CELLS = 5


def estimate_scale(green: np.ndarray, cfg: Hep2CellsConfig) -> ScaleInfo:
    """µm/px from the median size of the whole cells segmented at a provisional scale.

    Two rounds: the second segments at the first estimate (splitting and size filters
    depend on the scale). Fewer than 5 whole cells: the provisional scale, with a warning.
    """
    um = PROVISIONAL_UM_PER_PX
    found = 0
    for _ in range(2):
        cells = segment_cells(green, um, cfg)
        whole = cells.areas_px[~cells.touches_edge] if cells.count else np.zeros(0)
        found = int(whole.size)
        if found < _MIN_CELLS:
            break
        diameter_px = float(np.sqrt(4.0 * np.median(whole) / np.pi))
        um = ASSUMED_CELL_DIAMETER_UM / max(diameter_px, 1.0)
    lo, hi = _PLAUSIBLE_UM_PER_PX
    if found < _MIN_CELLS:
        return ScaleInfo(PROVISIONAL_UM_PER_PX, "assumed", (
            f"scale unknown: too few cells to estimate it; assumed {PROVISIONAL_UM_PER_PX} "
            "um/px (set optics.objective or optics.um_per_px)",))
    # Why the warning insists: the stained outline is a nucleus in nuclear patterns and a
    # whole cell in cytoplasmic ones, so the estimate leans with the pattern (measured in
    # docs/hep2.md, "Scale"); a declared objective has no such error.
    warnings = [f"scale estimated from cell size: {um:.2f} um/px, which may be off by a "
                "third depending on the pattern; set the objective (optics.objective or the "
                "set_objective command) for a reliable reading"]
    if not lo <= um <= hi:
        warnings.append(f"estimated scale {um:.2f} um/px is implausible; clamped")
        um = min(hi, max(lo, um))
    return ScaleInfo(um, "estimated", tuple(warnings))
