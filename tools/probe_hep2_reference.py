"""Probe how much a lab's HEp-2 calibration depends on its reference fields and serum.

    python -m tools.probe_hep2_reference [--patterns homogeneous,fine_speckled,...]

``appliance calibrate-iif`` sets ``units_per_grey`` from reference fields of a serum of
known intensity (docs/hep2-calibration.md). On generated reference wells (the cut-off
serum drawn at 20 units, bleached 0-30 % per field as the generator draws specimens),
this prints:

1. **the serum's pattern**: for each pattern, two wells of 5 fields at each of 40x, 20x
   and 10x (seeds from 790000), the calibration each well gives (the product's
   ``units_per_grey_from_reference``);
2. **the number of fields**: 12 wells of 10 fields, homogeneous, at 20x (seeds from
   795000), and what calibrations from 3, 5 or 10 of a well's fields give (5th, 50th
   and 95th percentile of 20 draws per well), with the fields' spread within a well.

The figures in docs/hep2-calibration.md ("How many fields, and which serum") come from
its first run. Generated data only: the size of the effect, not a real slide's.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from appliance.assays.hep2.assay import Hep2Assay
from appliance.assays.hep2.calibration import CalibrationError, units_per_grey_from_reference
from appliance.config import with_overrides
from tools.eval_hep2 import scoring_config
from tools.hep2_reference import REFERENCE_UNITS, measure_reference
from tools.synth.hep2_fields import Hep2FieldSpec

PATTERNS = ("homogeneous", "fine_speckled", "centromere", "nucleolar_homogeneous",
            "cyto_reticular")
SCALES = (0.27, 0.5, 0.9)  # um/px: 40x, 20x, 10x
PATTERN_SEED = 790_000
FIELDS_SEED = 795_000


def well(first_seed: int, pattern: str, um_per_px: float, fields: int) -> list[Hep2FieldSpec]:
    """One reference well: ``fields`` fields sharing the well's microscope and camera."""
    return [Hep2FieldSpec(seed=first_seed + k, um_per_px=um_per_px,
                          patterns=((pattern, 1.0),), intensity=REFERENCE_UNITS,
                          camera_seed=first_seed) for k in range(fields)]


def calibration(greys: Sequence[float]) -> str:
    """The units per grey the fields give, or why the product refuses them."""
    try:
        return f"{units_per_grey_from_reference(greys, REFERENCE_UNITS).units_per_grey:.3f}"
    except CalibrationError as e:
        return f"refused ({e})"


def by_pattern(assay: Hep2Assay, patterns: Sequence[str]) -> None:
    """Part 1: two wells per pattern and objective."""
    rows = []
    for pattern in tqdm(patterns, desc="patterns"):
        seed = PATTERN_SEED
        cells = []
        for um_per_px in SCALES:
            for _ in range(2):
                greys = [f.grey for f in measure_reference(assay, well(seed, pattern,
                                                                       um_per_px, 5))]
                cells.append(calibration(greys))
                seed += 5
        rows.append(f"  {pattern:24s} " + "  ".join(cells))
    print("units per grey from one well of 5 fields (two wells at 40x, then 20x, then 10x):")
    print("\n".join(rows))


def by_field_count(assay: Hep2Assay, rng: np.random.Generator) -> None:
    """Part 2: the spread of calibrations from 3, 5 and 10 fields of a well."""
    wells = np.array([[f.grey for f in measure_reference(
        assay, well(FIELDS_SEED + 10 * w, "homogeneous", 0.5, 10))]
        for w in tqdm(range(12), desc="wells of 10 fields")])
    spread = float(np.mean(np.abs(wells - np.median(wells, axis=1, keepdims=True))
                           / np.median(wells, axis=1, keepdims=True)))
    print(f"a field reads {spread:.1%} off its well's median on average; all fields' median "
          f"gives {REFERENCE_UNITS / float(np.median(wells)):.3f} units per grey")
    for n in (3, 5, 10):
        got = [REFERENCE_UNITS / float(np.median(rng.choice(row, n, replace=False)))
               for row in wells for _ in range(20)]
        lo, mid, hi = np.percentile(got, [5, 50, 95])
        print(f"  from {n:2d} fields: {lo:.3f} / {mid:.3f} / {hi:.3f} (5th / 50th / 95th "
              "percentile)")


def main(argv: Sequence[str] | None = None) -> int:
    """Print both parts."""
    ap = argparse.ArgumentParser(prog="python -m tools.probe_hep2_reference",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patterns", default=",".join(PATTERNS),
                    help="comma-separated pattern names for part 1")
    args = ap.parse_args(argv)
    cfg = with_overrides(scoring_config(None, "int8", ""),
                         {"hep2.intensity.units_per_grey": 1.0})
    with Hep2Assay.from_config(cfg) as assay:
        by_pattern(assay, [p for p in args.patterns.split(",") if p])
        by_field_count(assay, np.random.default_rng(0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
