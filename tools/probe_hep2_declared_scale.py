"""How often the HEp-2 check of a declared scale doubts it, right and wrong.

    python -m tools.probe_hep2_declared_scale [--specimens 10] [--seed 500000]
                                              [--json build/probe/declared_scale.json]

An objective turned without the box being told makes the declared scale a factor 2 (one
step: 10x, 20x, 40x) or 4 off. The assay compares a declared scale with the cells' size
(``scale.declared_scale_warning``) on the first frame of each still view of a field that
shows stained light. This tool generates the eval's specimens (``tools.eval_hep2``'s
cases; the held-out set by default), keeps the fields with stained light, and asks the
check with each field's true scale declared, and with it declared 2 and 4 times too fine
and too coarse. Printed per threshold (``DECLARED_DISAGREES`` and its neighbours): the
share of true scales doubted (false doubts) and of wrong ones doubted (caught). The size
estimate is measured once per field, so every threshold is read from the same estimates.
About 1.5 min for the 210 held-out specimens on 2 cores. Generated data only.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from appliance.assays.hep2.quality import measure_hep2_quality, shows_signal
from appliance.assays.hep2.scale import DECLARED_DISAGREES, cells_scale, disagrees
from appliance.config import Hep2CellsConfig
from tools.eval_hep2 import FIRST_SEED, specimen_cases
from tools.numbers import write_numbers
from tools.synth.hep2_fields import generate_hep2_field

FACTORS = (0.25, 0.5, 2.0, 4.0)  # declared / true: two and one step too fine, too coarse
THRESHOLDS = (1.6, DECLARED_DISAGREES, 2.0)


def summarise(seen_over_true: Sequence[float]) -> dict[str, dict[str, float]]:
    """Per threshold: the share of true scales doubted, and of each wrong factor caught."""
    ratios = np.asarray(seen_over_true, float)
    out: dict[str, dict[str, float]] = {}
    for th in THRESHOLDS:
        row = {"false_doubts": float(np.mean([disagrees(r, 1.0, th) for r in ratios]))}
        for f in FACTORS:
            row[f"caught_x{f:g}"] = float(np.mean([disagrees(r, f, th) for r in ratios]))
        out[f"{th:g}"] = row
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the table, and write the JSON when asked."""
    ap = argparse.ArgumentParser(prog="python -m tools.probe_hep2_declared_scale",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--specimens", type=int, default=10, help="per kind, as tools.eval_hep2")
    ap.add_argument("--seed", type=int, default=FIRST_SEED)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.specimens < 1:
        ap.error(f"--specimens must be at least 1, got {args.specimens}")
    cfg = Hep2CellsConfig()
    t0 = time.perf_counter()
    ratios: list[float] = []
    skipped = unsure = 0
    for case in tqdm(specimen_cases(args.specimens, first_seed=args.seed), desc="fields"):
        field = generate_hep2_field(case.spec)
        if not shows_signal(measure_hep2_quality(field.image, field.um_per_px, cfg)):
            skipped += 1  # the assay does not ask a field without stained light
            continue
        # Measured once, on the copy the assay makes when the truth is declared; each wrong
        # declaration is then judged by the assay's rule (``disagrees``). The copy for a wrong
        # declaration can differ in size, so this is the check at the true scale's copy.
        seen = cells_scale(field.image[..., 1].astype(np.float32), field.um_per_px, cfg)
        if seen is None:
            unsure += 1  # too few cells: the check says nothing
            continue
        ratios.append(seen / field.um_per_px)
    table = summarise(ratios)
    print(f"{len(ratios)} fields with stained light measured ({skipped} without stained light "
          f"and {unsure} with too few cells not asked), {time.perf_counter() - t0:.0f} s")
    print(f"cells' size / true scale: 5th-95th percentile "
          f"{np.percentile(ratios, 5):.2f}-{np.percentile(ratios, 95):.2f}")
    head = f"{'threshold':>9s} {'false doubts':>13s} " + " ".join(
        f"{'caught x' + format(f, 'g'):>11s}" for f in FACTORS)
    print(head)
    for th, row in table.items():
        mark = " (the assay's)" if float(th) == DECLARED_DISAGREES else ""
        print(f"{th:>9s} {row['false_doubts']:>13.3f} " + " ".join(
            f"{row[f'caught_x{f:g}']:>11.2f}" for f in FACTORS) + mark)
    if args.json is not None:
        write_numbers(args.json, {"fields": len(ratios), "not_asked_no_signal": skipped,
                                  "not_asked_few_cells": unsure, "seed": args.seed,
                                  "thresholds": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
