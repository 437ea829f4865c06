"""Write synthetic HER2 IHC fields with their truth, for replay and pipeline tests.

    python -m tools.make_samples --out DIR --count N --seed S [--width W --height H] [--masks]

Each field becomes DIR/field_XXX.png and DIR/field_XXX.json (scale, true score and
category, per-cell truth, the resolved spec that regenerates it); with ``--masks`` also
DIR/field_XXX_classes.png (0 background, 1 tumour nucleus, 2 other nucleus, 3 membrane).
Scores cycle through 0 / 1+ / 2+ / 3+; about one field in ten is out of focus.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from tools.synth.her2_fields import SCORES, FieldSpec, SyntheticField, class_map, generate_field

OUT_OF_FOCUS_SHARE = 0.1
OUT_OF_FOCUS_UM = (1.5, 4.0)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m tools.make_samples", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--count", required=True, type=int, help="number of fields")
    p.add_argument("--seed", required=True, type=int, help="seed of the whole set")
    p.add_argument("--width", type=int, default=640, help="field width in pixels")
    p.add_argument("--height", type=int, default=480, help="field height in pixels")
    p.add_argument("--masks", action="store_true", help="also write the class maps")
    args = p.parse_args(argv)
    if args.count < 1:
        p.error(f"--count must be at least 1, got {args.count}")
    if args.seed < 0:
        p.error(f"--seed must be >= 0, got {args.seed}")
    return args


def sample_specs(count: int, seed: int, width: int, height: int) -> list[FieldSpec]:
    """One spec per field: scores in turn (shuffled per cycle), a few fields defocused."""
    rng = np.random.default_rng(seed)
    specs = []
    for i in range(count):
        if i % len(SCORES) == 0:
            cycle = list(rng.permutation(SCORES))
        out_of_focus = rng.uniform() < OUT_OF_FOCUS_SHARE
        defocus = float(rng.uniform(*OUT_OF_FOCUS_UM)) if out_of_focus else None
        # Independent, well-mixed seeds per field, stable for a given (seed, index).
        field_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        specs.append(FieldSpec(seed=field_seed, width=width, height=height,
                               target_score=str(cycle[i % len(SCORES)]),
                               defocus_um=defocus))
    return specs


def field_record(field: SyntheticField, image_name: str) -> dict[str, Any]:
    """The JSON truth of one field."""
    return {
        "image": image_name,
        "width": int(field.image.shape[1]),
        "height": int(field.image.shape[0]),
        "um_per_px": field.um_per_px,
        "score": field.score,
        "category": field.category,
        "tumour_cells": sum(c.kind == "tumour" for c in field.cells),
        "spec": dataclasses.asdict(field.spec),
        "cells": [
            {
                "cell_id": c.cell_id,
                "kind": c.kind,
                "x": round(c.x, 2),
                "y": round(c.y, 2),
                "intensity": c.intensity.value if c.intensity is not None else None,
                "completeness": round(c.completeness, 4),
                "membrane_class": (c.membrane_class.value
                                   if c.membrane_class is not None else None),
            }
            for c in field.cells
        ],
    }


def _write_png(path: Path, image: np.ndarray) -> None:
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")


def write_field(field: SyntheticField, out: Path, index: int, masks: bool) -> None:
    """Write one field's image, truth JSON and (optionally) class map."""
    stem = f"field_{index:03d}"
    _write_png(out / f"{stem}.png", field.image)
    record = field_record(field, f"{stem}.png")
    (out / f"{stem}.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    if masks:
        _write_png(out / f"{stem}_classes.png", class_map(field))


def main(argv: Sequence[str] | None = None) -> int:
    """Generate the fields; returns the process exit status."""
    args = parse_args(argv)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"make_samples: cannot create {args.out}: {exc}", file=sys.stderr)
        return 1
    try:
        specs = sample_specs(args.count, args.seed, args.width, args.height)
    except ValueError as exc:  # e.g. a field size the generator refuses
        print(f"make_samples: {exc}", file=sys.stderr)
        return 2
    for i, spec in enumerate(tqdm(specs, desc="fields", unit="field")):
        write_field(generate_field(spec), args.out, i, args.masks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
