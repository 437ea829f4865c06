"""The classifier's crop of an image that holds one cell (the public cell datasets' form).

The classifier was trained on crops cut from whole fields: the cell at its true size in a
``crop_um`` window, its mask from the assay's segmentation. A single-cell image is read
best when it is cut the same way, which needs the image's scale. What is known decides
the method, best first (held-out generated cells cut as the ICPR 2014 / I3A images are,
`docs/hep2.md`, "Single-cell images"):

1. **The scale is declared** (``optics.um_per_px``, the objective, ``--um-per-px``): the
   cell is cut as in a field, at its true size. Its mask is the companion mask file when
   there is one, else the assay's own segmentation of the image (the object under the
   centre).
2. **A mask file but no scale:** the scale is taken from the mask's area, assuming a
   cell of ``ASSUMED_CELL_DIAMETER_UM``.
3. **Neither:** the image is taken as one cell filling it: its longer side is stretched
   over the crop, and the mask is the part above the image's own background. This reads
   worse, and the result says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from appliance.assays.hep2.crops import cell_crop
from appliance.assays.hep2.scale import ASSUMED_CELL_DIAMETER_UM
from appliance.assays.hep2.segmentation import segment_cells
from appliance.config import Hep2CellsConfig

# Method 3's mask: above the image's 5th percentile by this share of its range to the 99th.
_THRESHOLD_SHARE = 0.1
_MIN_MASK_DIAMETER_PX = 4.0  # a mask smaller than this cannot give a scale
_PAD_NUCLEI = 5.0  # the margin segmentation gets: wider than its background opening

SCALE_SOURCES = ("config", "objective", "mask", "unknown")
MASK_SOURCES = ("file", "segmented", "threshold")


@dataclass(frozen=True)
class SingleCellCrop:
    """The classifier's input for one single-cell image, and how it was made."""

    crop: np.ndarray  # (2, crop_px, crop_px) float32, as crops.cell_crop makes them
    um_per_px: float | None  # the scale used; None when the image was taken as filling it
    scale_source: str  # one of SCALE_SOURCES
    mask_source: str  # one of MASK_SOURCES
    warnings: tuple[str, ...]


def threshold_mask(green: np.ndarray) -> np.ndarray:
    """The part of a single-cell image above its own background (method 3's mask).

    All ones when nothing stands out (a flat image): the whole image is then the cell.
    """
    bg = float(np.percentile(green, 5.0))
    top = float(np.percentile(green, 99.0)) - bg
    mask = green > bg + _THRESHOLD_SHARE * max(top, 1e-3)
    return mask if mask.any() else np.ones(green.shape, bool)


def on_margin(image: np.ndarray, um_per_px: float, nucleus_diameter_um: float
              ) -> tuple[np.ndarray, int]:
    """The image ((H, W) or (H, W, C)) set in a margin of its own darkest light (each
    channel's 5th percentile), and the margin's width in pixels.

    The segmentation's background estimate reaches over several nucleus widths: without
    dark ground around it, a cell that fills its image is taken for background. The margin
    is as wide as the image, but never wider than that reach (a large image would otherwise
    be measured at nine times its area).
    """
    h, w = image.shape[:2]
    reach = math.ceil(_PAD_NUCLEI * nucleus_diameter_um / um_per_px)
    pad = min(max(h, w), reach)
    dark = np.percentile(image.reshape(h * w, -1), 5.0, axis=0).astype(image.dtype)
    canvas = np.empty((h + 2 * pad, w + 2 * pad, *image.shape[2:]), image.dtype)
    canvas[...] = dark.reshape(image.shape[2:])
    canvas[pad:pad + h, pad:pad + w] = image
    return canvas, pad


def segmented_labels(green: np.ndarray, um_per_px: float, cfg: Hep2CellsConfig
                     ) -> np.ndarray:
    """The assay's segmentation of a small image ((H, W) float32), set on a margin of its
    own background (``on_margin``): the cell labels in the image's pixels."""
    canvas, pad = on_margin(green, um_per_px, cfg.nucleus_diameter_um)
    h, w = green.shape
    return segment_cells(canvas, um_per_px, cfg).labels[pad:pad + h, pad:pad + w]


def segmented_mask(green: np.ndarray, um_per_px: float, cfg: Hep2CellsConfig
                   ) -> np.ndarray | None:
    """The assay's segmentation of a single-cell image: the object under its centre, else
    the largest. None when it finds no cell."""
    labels = segmented_labels(green, um_per_px, cfg)
    if not labels.any():
        return None
    centre = int(labels[labels.shape[0] // 2, labels.shape[1] // 2])
    if centre == 0:
        ids, counts = np.unique(labels[labels > 0], return_counts=True)
        centre = int(ids[np.argmax(counts)])
    return np.asarray(labels == centre)


def scale_from_mask(mask: np.ndarray) -> float | None:
    """µm/px if the mask is one cell of ASSUMED_CELL_DIAMETER_UM (None: too small to say)."""
    diameter_px = math.sqrt(4.0 * float(mask.sum()) / math.pi)
    if diameter_px < _MIN_MASK_DIAMETER_PX:
        return None
    return ASSUMED_CELL_DIAMETER_UM / diameter_px


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def _filled(green: np.ndarray, mask: np.ndarray, cfg: Hep2CellsConfig) -> np.ndarray:
    """Method 3: the image's longer side spans the crop; the image's centre is its centre."""
    h, w = green.shape
    outside = ~mask
    background = float(np.percentile(green[outside], 20.0)) if outside.any() else 0.0
    return cell_crop(green, mask, ((w - 1) / 2.0, (h - 1) / 2.0), cfg.crop_um / max(h, w),
                     cfg, background=background)


def single_cell_crop(green: np.ndarray, cfg: Hep2CellsConfig, *,
                     um_per_px: float | None = None, scale_source: str = "config",
                     mask: np.ndarray | None = None) -> SingleCellCrop:
    """The crop of a single-cell image ((H, W) green grey levels), by the best method the
    known scale and mask allow (module docstring).

    ``um_per_px`` is the declared scale (None: not known) and ``scale_source`` where it
    was declared (``config`` or ``objective``). ``mask`` is the cell's mask from a
    companion file (None: none given).
    """
    if green.ndim != 2 or min(green.shape) < 1:
        raise ValueError(f"expected an (H, W) image, got shape {green.shape}")
    if mask is not None and mask.shape != green.shape:
        raise ValueError(f"the mask is {mask.shape[1]}x{mask.shape[0]} px, the image "
                         f"{green.shape[1]}x{green.shape[0]}")
    if um_per_px is not None and not (um_per_px > 0 and math.isfinite(um_per_px)):
        raise ValueError(f"um_per_px must be a positive number, got {um_per_px!r}")
    green = green.astype(np.float32, copy=False)
    warnings: list[str] = []
    given = mask if mask is not None and mask.any() else None
    if mask is not None and given is None:
        warnings.append("the mask file marks no pixel: ignored")
    if um_per_px is None and given is not None:
        um_per_px, scale_source = scale_from_mask(given), "mask"
        if um_per_px is None:
            warnings.append("the mask is too small to give the scale")
        else:
            warnings.append(f"scale from the mask's size, assuming a "
                            f"{ASSUMED_CELL_DIAMETER_UM:g} um cell: {um_per_px:.3f} um/px")
    if um_per_px is None:
        warnings.append("scale unknown: the image is taken as one cell filling it, which "
                        "reads less reliably; give the scale (--um-per-px or the objective)")
        cell = given if given is not None else threshold_mask(green)
        return SingleCellCrop(_filled(green, cell, cfg), None, "unknown",
                              "threshold" if given is None else "file", tuple(warnings))
    if given is not None:
        cell, source = given, "file"
    else:
        found = segmented_mask(green, um_per_px, cfg)
        if found is None:
            cell, source = threshold_mask(green), "threshold"
            warnings.append("segmentation found no cell in the image: the part above its "
                            "background is taken as the cell")
        else:
            cell, source = found, "segmented"
    crop = cell_crop(green, cell, _centroid(cell), um_per_px, cfg)
    return SingleCellCrop(crop, um_per_px, scale_source, source, tuple(warnings))
