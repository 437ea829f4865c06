"""Input gates for a single-cell image (`appliance score --assay hep2 --cell`).

A field's gates (``quality.py``) refuse what is not a FITC field; before these gates the
single-cell path classified whatever it was given, so a brightfield HER2 crop came back as
a speckled pattern, a black or white image as AC-0 or AC-1, and a whole field as one
"cell". A single-cell image is the same light seen through a smaller window, so the
field's measures apply, with what a small window changes:

1. **Wrong stain** (fatal; a monochrome image: a warning): the field's colour tests on the
   image as it is. The field's bright-background test asks whether the field's median is
   bright in every channel; a cell image's median may be the cell itself, so the test asks
   it of the image's darkest light instead (the 5th percentile of each channel): a
   fluorescence image of a cell is dark somewhere (the background around the cell, or at
   least its rim), a brightfield one is bright even there.
2. **Nothing to classify** (``nothing_in_view``): no light above the sensor noise (a black
   or an even image). A negative cell still shows its faint autofluorescence above the
   noise; the generated negative cells of the single-cell measurement all do
   (docs/hep2.md, "Single-cell images"). The background is the margin's (the image's
   5th percentile), so an image of sensor noise alone, whose brighter half stands above
   its darkest pixels, is not refused: it reads as a faint cell.
3. **Over-exposed**: clipped green as a share of the cell's pixels, as for a field.
4. **Not one cell** (``not_single_cell``): three or more whole cells (cells not cut by the
   image's border) at the scale used: the declared scale, the mask's, or without either
   the scale the cells' own size gives, which needs five or more whole objects. A field
   given as a cell by mistake; a crop of a dividing cell holds two at most. Without a
   scale only an image at least FIELD_MIN_SIDE_PX on its shorter side is asked: a
   reticular or speckled cytoplasm at 40x falls into fragments that the size estimate,
   not knowing the scale, takes for cells (6 of 1,020 generated cells at 0.25 µm/px were
   refused so), while a cell cut with a margin at 40x is about 130 px (25 µm and 15%
   either side at 0.25 µm/px).

Focus is not judged: the field's sharpness measure needs a few hundred cell pixels at
0.5 µm/px, and on single cells it misses the blur that matters (1 µm RMS halves their
accuracy while 1-3% read below the field's limit: tools.probe_hep2_focus).

Pure: numpy and cv2 on the image given.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from appliance.assays.hep2.intensity import background_map
from appliance.assays.hep2.quality import (
    MAX_SATURATED,
    measure_hep2_quality,
    over_exposure_issues,
    signal_and_floor,
    stain_issues,
)
from appliance.assays.hep2.scale import ASSUMED_CELL_DIAMETER_UM, estimate_scale
from appliance.assays.hep2.single_cell import on_margin, segmented_labels
from appliance.assays.her2.types import QualityIssue
from appliance.capture.stills import ImageRejected
from appliance.config import Hep2CellsConfig

# A cell image's "background" for the bright-background test: its darkest light.
_DARK_PERCENTILE = 5.0
# Three whole cells or more: not one cell (a dividing cell is two).
MAX_WHOLE_CELLS = 2
_UM_PER_PX_RANGE = (0.1, 2.0)  # the scale assumed for the measures when none is known
# Without a scale, only an image this large (shorter side, px) is asked whether it is a
# field (module docstring, 4).
FIELD_MIN_SIDE_PX = 200


class CellRefused(ImageRejected):
    """A single-cell image a gate refuses: ``code`` and ``reason`` as a field's refusal
    (``wrong_stain``, ``nothing_in_view``, ``over_exposed``, ``not_single_cell``)."""


def assumed_scale(shape: tuple[int, ...]) -> float:
    """The scale of an image taken as one cell filling it (its longer side), within
    _UM_PER_PX_RANGE: what the measures need when nothing is known."""
    lo, hi = _UM_PER_PX_RANGE
    return min(hi, max(lo, ASSUMED_CELL_DIAMETER_UM / max(shape[0], shape[1], 1)))


def whole_cells(green: np.ndarray, um_per_px: float, cfg: Hep2CellsConfig) -> int:
    """Cells the assay's segmentation finds in the image at ``um_per_px`` that its border
    does not cut."""
    labels = segmented_labels(green.astype(np.float32, copy=False), um_per_px, cfg)
    cut = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return len(set(np.unique(labels).tolist()) - {0} - set(np.unique(cut).tolist()))


def cell_image_issues(rgb: np.ndarray, um_per_px: float | None, cfg: Hep2CellsConfig, *,
                      red_counterstain: bool = False) -> list[QualityIssue]:
    """Fatal issues and warnings of an (H, W, 3) uint8 single-cell image, most fundamental
    first (module docstring). ``um_per_px``: the scale the crop is cut at (declared, or
    from the cell's mask); None when unknown."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    um = um_per_px if um_per_px is not None else assumed_scale(rgb.shape)
    canvas, pad = on_margin(rgb, um, cfg.nucleus_diameter_um)
    q = measure_hep2_quality(canvas, um, cfg, red_counterstain=red_counterstain,
                             focus=False)  # not judged on a single cell
    dark = np.percentile(rgb.reshape(-1, 3), _DARK_PERCENTILE, axis=0)
    stain = stain_issues(replace(q, median_rgb=(float(dark[0]), float(dark[1]),
                                                float(dark[2]))), background="darkest 5%:")
    if any(i.fatal for i in stain):
        return stain
    # Signal and noise of the image itself: the margin is flat and would hide its noise.
    h, w = rgb.shape[:2]
    green = rgb[..., 1].astype(np.float32)
    bg = background_map(canvas[..., 1].astype(np.float32), um, cfg)[pad:pad + h, pad:pad + w]
    signal, floor = signal_and_floor(green, bg, um)
    if signal <= floor:
        return [*stain, QualityIssue(
            "nothing_in_view",
            f"nothing to classify: no light above the sensor noise (brightest green "
            f"{signal:.1f} grey over the background, noise floor {floor:.1f}): a black or "
            "even image; a negative cell still shows faintly above the noise", fatal=True)]
    exposure = over_exposure_issues(q, MAX_SATURATED)
    if any(i.fatal for i in exposure):
        return [*stain, *exposure]
    scale = um_per_px
    if scale is None and min(h, w) >= FIELD_MIN_SIDE_PX:
        found = estimate_scale(green, cfg)
        scale = found.um_per_px if found.source == "estimated" else None
    count = 0 if scale is None else whole_cells(green, scale, cfg)
    if count > MAX_WHOLE_CELLS:
        return [*stain, *exposure, QualityIssue(
            "not_single_cell",
            f"not one cell: the image holds {count} whole cells (at {scale:.2f} um/px): a "
            "field, not a single-cell image; score it without --cell, which finds and "
            "classifies each of its cells", fatal=True)]
    return [*stain, *exposure]
