"""Could a HEp-2 view keep the scale estimated on the view before? Measured: not safely.

    python -m tools.probe_hep2_carried_scale [--wells 3] [--seed 997000]
                                             [--json FILE] [--out PNG]

Where nothing declares the objective, the live box estimates each still view's scale:
the cells' size, then the classifier's search around it (``Hep2Assay._estimated_scale``,
1.5-2 s for 800x600 on two cores). The objective cannot be turned without the view
changing, so a next view could keep the earlier estimate unless a cheap check says the
objective was turned. This tool measures two such checks on wells drawn as
``tools.eval_hep2_wells`` draws them (the eval's specimen plan; ``--wells`` of each kind):

- field A of a well is estimated as the box does on a first view (the carried scale);
- field B, the same well at the same objective: the check should keep the carried scale;
- field C, the same well one objective step away (twice or half the scale): the check
  must catch it, or every size in the view is wrong by a factor of 2.

The checks: **size**, the view's cells' size (``scale.cells_scale``, about 0.3 s) within a
factor of the carried scale; **size + fit**, that and the classifier reading the central
cells at least as surely at the carried scale as at twice and half of it (three of the
search's seven classifier runs). Printed: per factor, the share of B kept and of C caught;
how far the carried scale and a fresh estimate of B lie from the truth. Charted: the
cells' size over the carried scale for B and C. Seeds from 997000 (three per well), apart
from every other set; ``--seed 500000`` reads the held-out wells. Generated data only.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from appliance.assays.hep2.assay import Hep2Assay
from appliance.assays.hep2.scale import SEARCH_MIN_CELLS, cells_scale, central_cells, disagrees
from appliance.assays.hep2.segmentation import segment_cells
from appliance.capture.frame import Frame
from appliance.config import config_from_dict
from tools.eval_hep2 import SpecimenCase
from tools.eval_hep2_wells import field_specs, well_cases
from tools.numbers import save_chart, write_numbers
from tools.synth.hep2_fields import Hep2Field, generate_hep2_field

FIRST_SEED = 997_000
FACTORS = (1.25, 1.3, 1.4, 1.5, 1.6, 1.8)
CHARTED = 1.4  # the factor drawn on the chart


def carried_scale_holds(seen: float | None, carried_um_per_px: float, factor: float) -> bool:
    """Whether the earlier view's scale would be kept for a view whose cells' size says
    ``seen`` µm/px (None: too few cells to say; nothing then says the objective turned)."""
    return seen is None or not disagrees(seen, carried_um_per_px, factor)


@dataclass(frozen=True)
class WellScales:
    """One well's scales (µm/px): the truth, field A's estimate, field B's fresh estimate
    (None when B was refused), and the cells' size of B and of C (None: too few cells)."""

    truth: float
    carried: float
    fresh_b: float | None
    seen_b: float | None
    turned: float  # C's true scale
    seen_c: float | None
    fit_holds_b: bool  # the classifier reads B's cells surest at the carried scale
    fit_holds_c: bool


def frame_of(field: Hep2Field, seq: int) -> Frame:
    """A generated field as the camera would hand it over (no scale declared)."""
    return Frame(image=field.image, seq=seq, timestamp=0.0, source=f"seed {field.spec.seed}")


def turned_scale(um_per_px: float) -> float:
    """One objective step away, within the 10x-40x the box is made for."""
    return um_per_px * 2.0 if um_per_px < 0.5 else um_per_px / 2.0


def fit_holds(assay: Hep2Assay, green: np.ndarray, carried: float) -> bool:
    """Whether the classifier reads the view's central cells at least as surely at the
    carried scale as at twice and at half of it (scale.classifier_fit, as the search)."""
    cfg = assay.cfg.hep2.cells
    fits = {}
    for um in (carried, 2.0 * carried, 0.5 * carried):
        cells = segment_cells(green, um, cfg)
        ids = central_cells(cells, green.shape[:2], cfg.scale_search_cells)
        if len(ids) >= SEARCH_MIN_CELLS:
            fits[um] = assay.fit_at(green, cells.labels, ids, um)
    if carried not in fits:
        return True  # too few cells to say: nothing says the objective turned
    return all(fits[carried] >= f for f in fits.values())


def measure_well(assay: Hep2Assay, case: SpecimenCase, seq: int) -> WellScales | None:
    """A well's scales; None when field A gives no estimate the box would carry (refused,
    or too few cells: the scale is then assumed, not estimated)."""
    first = generate_hep2_field(case.spec)
    prep_a = assay.prepare(frame_of(first, seq))
    if prep_a.refusal is not None or prep_a.scale.source != "estimated":
        return None
    carried = prep_a.scale.um_per_px
    same, other = field_specs(case, first, 3)
    turned_spec = replace(other, um_per_px=turned_scale(first.um_per_px))
    cfg = assay.cfg.hep2.cells
    field_b, field_c = generate_hep2_field(same), generate_hep2_field(turned_spec)
    green_b, green_c = (f.image[..., 1].astype(np.float32) for f in (field_b, field_c))
    prep_b = assay.prepare(frame_of(field_b, seq + 1))
    fresh_b = prep_b.scale.um_per_px if (prep_b.refusal is None
                                         and prep_b.scale.source == "estimated") else None
    return WellScales(first.um_per_px, carried, fresh_b, cells_scale(green_b, carried, cfg),
                      field_c.um_per_px, cells_scale(green_c, carried, cfg),
                      fit_holds(assay, green_b, carried), fit_holds(assay, green_c, carried))


def summarise(wells: Sequence[WellScales]) -> dict[str, Any]:
    """Per factor, the share of B kept and of C caught; the scale errors."""
    per_factor = {}
    for f in FACTORS:
        size_b = [carried_scale_holds(w.seen_b, w.carried, f) for w in wells]
        size_c = [carried_scale_holds(w.seen_c, w.carried, f) for w in wells]
        per_factor[f"{f:g}"] = {
            "size": {"same_objective_kept": float(np.mean(size_b)),
                     "turned_objective_caught": 1.0 - float(np.mean(size_c))},
            "size_and_fit": {
                "same_objective_kept": float(np.mean(
                    [s and w.fit_holds_b for s, w in zip(size_b, wells, strict=True)])),
                "turned_objective_caught": 1.0 - float(np.mean(
                    [s and w.fit_holds_c for s, w in zip(size_c, wells, strict=True)]))}}

    def errors(pairs: list[tuple[float, float]]) -> dict[str, float]:
        off = np.array([abs(np.log(est / truth)) for est, truth in pairs])
        return {"n": len(off),
                "median_off": float(np.expm1(np.median(off))),
                "p90_off": float(np.expm1(np.percentile(off, 90))),
                "within_10pct": float(np.mean(off <= np.log(1.1))),
                "within_25pct": float(np.mean(off <= np.log(1.25)))}

    both = [w for w in wells if w.fresh_b is not None]
    return {
        "wells": len(wells),
        "b_too_few_cells": sum(w.seen_b is None for w in wells),
        "c_too_few_cells": sum(w.seen_c is None for w in wells),
        "factors": per_factor,
        "fit_alone": {"same_objective_kept": float(np.mean([w.fit_holds_b for w in wells])),
                      "turned_objective_caught": 1.0 - float(np.mean(
                          [w.fit_holds_c for w in wells]))},
        "carried_scale_error": errors([(w.carried, w.truth) for w in both]),
        "fresh_estimate_error": errors([(w.fresh_b, w.truth) for w in both
                                        if w.fresh_b is not None]),
    }


def chart(wells: Sequence[WellScales], path: Path) -> None:
    """Histograms of the cells' size over the carried scale, same and turned objective."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    bins = [float(b) for b in np.geomspace(0.25, 4.0, 49)]
    for label, values, colour in (
            ("same objective (B)", [w.seen_b / w.carried for w in wells if w.seen_b], "#2a7"),
            ("objective turned (C)", [w.seen_c / w.carried for w in wells if w.seen_c],
             "#c44")):
        ax.hist(values, bins=bins, alpha=0.6, label=label, color=colour)
    for f in (CHARTED, 1.0 / CHARTED):
        ax.axvline(f, color="k", lw=1, ls="--")
    ax.set_xscale("log")
    ax.set_xticks([0.25, 0.5, 0.71, 1.0, 1.4, 2.0, 4.0])
    ax.set_xticklabels(["0.25", "0.5", "0.71", "1", "1.4", "2", "4"])
    ax.minorticks_off()
    ax.set_xlabel("cells' size of the new view / carried scale (dashed: kept between)")
    ax.set_ylabel("wells")
    ax.legend(frameon=False)
    save_chart(fig, path, dpi=110)
    print(f"chart: {path}")


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the table, write the JSON and the chart when asked."""
    ap = argparse.ArgumentParser(prog="python -m tools.probe_hep2_carried_scale",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wells", type=int, default=3, help="per kind, as tools.eval_hep2")
    ap.add_argument("--seed", type=int, default=FIRST_SEED)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None, help="chart (PNG)")
    args = ap.parse_args(argv)
    if args.wells < 1:
        ap.error(f"--wells must be at least 1, got {args.wells}")
    assay = Hep2Assay.from_config(config_from_dict({"assay": "hep2"}))
    t0 = time.perf_counter()
    wells: list[WellScales] = []
    not_carried = 0
    try:
        cases = well_cases(args.wells, 3, args.seed)
        for i, case in enumerate(tqdm(cases, desc="wells")):
            got = measure_well(assay, case, 10 * i)
            if got is None:
                not_carried += 1
            else:
                wells.append(got)
    finally:
        assay.close()
    if not wells:
        print("no well gave a scale to carry")
        return 1
    doc = summarise(wells)
    print(f"{len(wells)} wells with a scale to carry ({not_carried} without: refused or "
          f"too few cells), {time.perf_counter() - t0:.0f} s; too few cells to check: "
          f"{doc['b_too_few_cells']} same-objective views, {doc['c_too_few_cells']} turned")
    print(f"{'check':>14s} {'same objective kept':>20s} {'turned caught':>14s}")
    rows = [("fit alone", doc["fit_alone"])] + [
        (f"{name} {f}", row[key]) for f, row in doc["factors"].items()
        for key, name in (("size", "size"), ("size_and_fit", "size+fit"))]
    for label, row in rows:
        print(f"{label:>14s} {row['same_objective_kept']:>20.3f} "
              f"{row['turned_objective_caught']:>14.3f}")
    for key, label in (("carried_scale_error", "carried from A"),
                       ("fresh_estimate_error", "B estimated anew")):
        e = doc[key]
        print(f"{label:>17s}: off the truth by median {e['median_off']:.1%}, 90th pct "
              f"{e['p90_off']:.1%}; within 10% {e['within_10pct']:.2f}, within 25% "
              f"{e['within_25pct']:.2f} (n={e['n']})")
    if args.json is not None:
        write_numbers(args.json, {"seed": args.seed, "not_carried": not_carried, **doc})
    if args.out is not None:
        chart(wells, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
