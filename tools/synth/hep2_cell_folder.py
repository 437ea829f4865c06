"""Generated single-cell images in the layout of the public HEp-2 cell datasets.

    python -m tools.synth.hep2_cell_folder --out build/cells40x --per-class 60 --um-per-px 0.35

Writes ``OUT/<class name>/<seed>_<cell>.png`` (the green channel, 8-bit grey) and, unless
``--no-masks``, the cell's mask beside it as ``<seed>_<cell>_mask.png``: the ICPR 2014 / I3A
form (``DIR/<class>/*.png`` with companion masks) that `appliance score --assay hep2 --cell`,
``tools.validate_hep2`` and ``tools.train_hep2 --cells-dir`` read. Each image is a whole
interphase cell's bounding box with a margin, cut from a generated one-pattern field at one
scale, as a lab images its cells at one objective. Seeds start at 880000, apart from every
training, tuning and evaluation range, so these cells are held out for the shipped model.

It exists to measure the single-cell path end to end on cells whose truth is known, and to
exercise the tools that read a lab's folders; it says nothing about real cells.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from appliance.assays.hep2.patterns import NAMES
from tools.synth.hep2_fields import Hep2FieldSpec, generate_hep2_field

FIRST_SEED = 880_000
CELLS_PER_FIELD = 12  # from one field, so a class's cells come from several fields
WIDTH, HEIGHT = 640, 480


def cut_cell(image: np.ndarray, labels: np.ndarray, cell_id: int, margin: float
             ) -> tuple[np.ndarray, np.ndarray]:
    """(green, mask) of one cell: its bounding box grown by ``margin`` of its longer side."""
    ys, xs = np.nonzero(labels == cell_id)
    m = round(margin * (max(np.ptp(ys), np.ptp(xs)) + 1))
    y0, y1 = max(0, int(ys.min()) - m), min(labels.shape[0], int(ys.max()) + m + 1)
    x0, x1 = max(0, int(xs.min()) - m), min(labels.shape[1], int(xs.max()) + m + 1)
    return image[y0:y1, x0:x1, 1].copy(), labels[y0:y1, x0:x1] == cell_id


def cell_images(per_class: int, *, um_per_px: float, first_seed: int = FIRST_SEED,
                margin: float = 0.15, classes: Sequence[str] = NAMES
                ) -> Iterator[tuple[str, str, np.ndarray, np.ndarray]]:
    """(class name, file stem, green uint8, mask) of ``per_class`` cells of each class."""
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    if not 0.1 <= um_per_px <= 3.0:
        raise ValueError(f"um_per_px {um_per_px} is outside the generator's 0.1..3")
    seed = first_seed
    for k, name in enumerate(classes):
        rng = np.random.default_rng(first_seed + k)
        written = 0
        while written < per_class:
            f = generate_hep2_field(Hep2FieldSpec(seed=seed, width=WIDTH, height=HEIGHT,
                                                  um_per_px=um_per_px,
                                                  patterns=((name, 1.0),)))
            whole = [c for c in f.cells if not c.touches_edge and not c.mitotic]
            rng.shuffle(whole)
            for cell in whole[:min(CELLS_PER_FIELD, per_class - written)]:
                green, mask = cut_cell(f.image, f.cell_labels, cell.cell_id, margin)
                yield name, f"{seed}_{cell.cell_id:03d}", green, mask
                written += 1
            seed += 1


def write_cell_folder(out: Path, per_class: int, *, um_per_px: float,
                      first_seed: int = FIRST_SEED, margin: float = 0.15, masks: bool = True,
                      classes: Sequence[str] = NAMES, progress: bool = False) -> dict[str, int]:
    """Write ``per_class`` cells of each class; the count written per class."""
    counts: dict[str, int] = {}
    cells = cell_images(per_class, um_per_px=um_per_px, first_seed=first_seed, margin=margin,
                        classes=classes)
    for name, stem, green, mask in tqdm(cells, total=per_class * len(classes), desc="cells",
                                        disable=not progress):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{stem}.png"), green)
        if masks:
            cv2.imwrite(str(folder / f"{stem}_mask.png"), mask.astype(np.uint8) * 255)
        counts[name] = counts.get(name, 0) + 1
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """Write the folder; print what was written."""
    ap = argparse.ArgumentParser(prog="python -m tools.synth.hep2_cell_folder",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--um-per-px", type=float, default=0.35,
                    help="the scale of every field (default 0.35: about a 40x objective)")
    ap.add_argument("--seed", type=int, default=FIRST_SEED, help="first field seed")
    ap.add_argument("--margin", type=float, default=0.15,
                    help="margin around the cell's bounding box, as a share of its side")
    ap.add_argument("--no-masks", action="store_true", help="write no companion masks")
    args = ap.parse_args(argv)
    counts = write_cell_folder(args.out, args.per_class, um_per_px=args.um_per_px,
                               first_seed=args.seed, margin=args.margin,
                               masks=not args.no_masks, progress=True)
    print(f"{sum(counts.values())} cells in {len(counts)} class folders under {args.out} "
          f"({args.um_per_px} um/px, seeds from {args.seed})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
