"""Does the single-cell gate tell an image with a cell from one with nothing but noise?

`appliance score --assay hep2 --cell` refuses an image with nothing to classify
(``nothing_in_view``, ``appliance/assays/hep2/cell_quality.py``). This probe asks the gate
about two kinds of image and prints, for each, how many it refuses:

- **cells**: generated single-cell images of every class (the single-cell measurement's
  form, ``tools.synth.hep2_cell_folder``: the cell's bounding box and a margin), at the
  scales given, the scale unknown as in the worst case. None should be refused: a negative
  cell still shows its faint autofluorescence.
- **empty**: images of no cell at all, as a camera could give them: white noise (Gaussian,
  uniform, Poisson photon noise), the same noise blurred (a demosaiced or binned sensor),
  compressed as JPEG, and with a smooth slope or vignetting of the lamp across the window,
  at several sizes, levels and noise strengths. Ideally all are refused.

The gate as it is refuses almost none of the empty images: the known gap that an image
of noise reads as a faint negative cell. Two tests that would close it were measured with
this probe and ``tools.eval_hep2_cells`` and not adopted (docs/hep2.md, "Single-cell
images"): they refused visible generated cells too.

Usage: python -m tools.probe_hep2_empty_cells [--per-class 20] [--scales 0.25,0.5,0.9]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from appliance.assays.hep2.cell_quality import cell_image_issues
from appliance.config import Hep2CellsConfig
from tools.synth.hep2_cell_folder import cell_images

FIRST_SEED = 997_500  # cells: ad-hoc probe range (not the eval's 880000+)
NOISE_SEED = 997_900
SIZES = (40, 64, 96, 160)
KINDS = ("gaussian", "uniform", "poisson", "blurred", "jpeg", "slope", "vignette")


def as_rgb(green: np.ndarray) -> np.ndarray:
    """A green fluorescence image as the camera gives it: faint red and blue beside green."""
    g = np.clip(green, 0, 255)
    return np.stack([g * 0.15, g, g * 0.1], axis=-1).astype(np.uint8)


def empty_image(kind: str, size: int, level: float, sigma: float,
                rng: np.random.Generator) -> np.ndarray:
    """An (H, W, 3) uint8 image of no cell: ``level`` grey with noise of ``sigma``."""
    shape = (size, size)
    green: np.ndarray
    if kind == "uniform":
        green = rng.uniform(level - sigma * 3**0.5, level + sigma * 3**0.5, shape)
    elif kind == "poisson":  # photon noise: sigma**2 photons per grey level of spread
        gain = max(sigma**2 / max(level, 1.0), 1e-3)
        green = rng.poisson(level / gain, shape) * gain
    else:
        green = rng.normal(level, sigma, shape)
    if kind == "blurred":  # neighbours share light, as after demosaicing or binning
        green = level + np.asarray(cv2.GaussianBlur(green - level, (0, 0), 0.8)) * 2.0
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    if kind == "slope":  # a lamp brighter on one side: 3 noise sigmas across the window
        green = green + 3.0 * sigma * (xx - 0.5)
    if kind == "vignette":  # brighter in the middle, as the centre of a lamp's field
        green = green + 3.0 * sigma * (1.0 - ((xx - 0.5) ** 2 + (yy - 0.5) ** 2) * 2.0)
    rgb = as_rgb(green)
    if kind == "jpeg":
        ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 75])
        decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
        if decoded is None:
            raise RuntimeError("OpenCV could not round-trip a JPEG")
        rgb = decoded[..., ::-1]
    return np.ascontiguousarray(rgb)


def empty_images(seed: int) -> Iterator[tuple[str, np.ndarray]]:
    """(kind, image) of every kind, size, level and noise strength."""
    rng = np.random.default_rng(seed)
    for kind in KINDS:
        for size in SIZES:
            for level in (3.0, 10.0, 30.0, 60.0):
                for sigma in (1.0, 3.0, 8.0):
                    yield kind, empty_image(kind, size, level, sigma, rng)


def refused(rgb: np.ndarray, um_per_px: float | None, cfg: Hep2CellsConfig) -> str | None:
    """The code of the fatal issue the gate finds, None when it lets the image through."""
    fatal = next((i for i in cell_image_issues(rgb, um_per_px, cfg) if i.fatal), None)
    return None if fatal is None else fatal.code


def probe(per_class: int, scales: Sequence[float], *, progress: bool = True
          ) -> dict[str, object]:
    """Refusals of generated cells (by scale and class) and of empty images (by kind)."""
    cfg = Hep2CellsConfig()
    cells: dict[str, dict[str, object]] = {}
    for k, scale in enumerate(scales):
        codes: Counter[str] = Counter()
        refused_by_class: Counter[str] = Counter()
        total = 0
        images = cell_images(per_class, um_per_px=scale, first_seed=FIRST_SEED + 1000 * k)
        for name, _, green, _ in tqdm(images, desc=f"cells {scale:g} um/px", disable=not progress,
                                      total=per_class * 17):
            total += 1
            code = refused(as_rgb(green.astype(np.float32)), None, cfg)
            if code is not None:
                codes[code] += 1
                refused_by_class[name] += 1
        cells[f"{scale:g}"] = {"total": total, "refused": dict(codes),
                               "by_class": dict(refused_by_class)}
    empty: dict[str, dict[str, int]] = {}
    for kind, rgb in tqdm(list(empty_images(NOISE_SEED)), desc="empty images",
                          disable=not progress):
        row = empty.setdefault(kind, {"total": 0, "nothing_in_view": 0, "other": 0})
        row["total"] += 1
        code = refused(rgb, None, cfg)
        if code == "nothing_in_view":
            row["nothing_in_view"] += 1
        elif code is not None:
            row["other"] += 1
    return {"cells": cells, "empty": empty}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the probe and print its table."""
    ap = argparse.ArgumentParser(prog="python -m tools.probe_hep2_empty_cells",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=20, help="cells of each class per scale")
    ap.add_argument("--scales", default="0.25,0.5,0.9", help="um/px, comma-separated")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args(argv)
    scales = [float(s) for s in args.scales.split(",") if s.strip()]
    out = probe(args.per_class, scales)
    print("cells (should pass), scale unknown:")
    for scale, row in out["cells"].items():  # type: ignore[attr-defined]
        print(f"  {scale} um/px: {sum(row['refused'].values())} of {row['total']} refused "
              f"{row['refused'] or ''} {row['by_class'] or ''}")
    print("empty images (should be refused as nothing_in_view):")
    for kind, row in out["empty"].items():  # type: ignore[attr-defined]
        print(f"  {kind:9s} {row['nothing_in_view']:3d} of {row['total']} "
              f"(other refusals {row['other']})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
