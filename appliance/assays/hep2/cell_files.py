"""Which file is a single-cell image's mask: one naming rule for the box and the tools.

The ICPR 2014 / I3A cell datasets keep each cell's mask beside its image, named after it
with ``_mask`` (``0042.png`` and ``0042_Mask.png``); case does not matter, and the mask
may have another image suffix than the cell.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from appliance.capture.replay import IMAGE_SUFFIXES
from appliance.capture.stills import ImageRejected, load_still
from appliance.config import InputConfig

MASK_SUFFIX = "_mask"


def is_mask_file(path: Path) -> bool:
    """True for a file named as a companion mask (``*_mask.<image suffix>``)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and path.stem.lower().endswith(MASK_SUFFIX)


def companion_mask(path: Path) -> Path | None:
    """The mask file beside ``path`` (None: there is none)."""
    try:
        stamp = path.parent.stat().st_mtime_ns
    except OSError:
        return None
    return _masks_in(path.parent, stamp).get(f"{path.stem.lower()}{MASK_SUFFIX}")


@functools.lru_cache(maxsize=8)
def _masks_in(folder: Path, stamp: int) -> dict[str, Path]:
    """The mask files of a folder by lower-case stem. Listed once per folder state (its
    mtime is in the key), not once per image: a class folder may hold thousands."""
    del stamp  # only part of the cache key
    out: dict[str, Path] = {}
    try:
        for p in sorted(folder.iterdir()):
            if is_mask_file(p) and p.is_file():
                out.setdefault(p.stem.lower(), p)
    except OSError:
        return {}
    return out


def load_cell_image(path: Path, cfg: InputConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """A single-cell image as the box reads it, (H, W, 3) uint8, and its companion mask
    (non-zero is the cell; None: no mask file). Raises ImageRejected, naming the mask file
    when it is the mask that is unreadable or of another size than its cell.
    """
    image = load_still(path, cfg, grey_ok=True)
    mask_path = companion_mask(path)
    if mask_path is None:
        return image, None
    mask_image = load_still(mask_path, cfg, grey_ok=True)
    if mask_image.shape[:2] != image.shape[:2]:
        raise ImageRejected("mask_mismatch", (
            f"its mask {mask_path.name} is {mask_image.shape[1]}x{mask_image.shape[0]} px, "
            f"the cell image {image.shape[1]}x{image.shape[0]}"))
    return image, np.asarray(mask_image.max(axis=2) > 0)
