"""Evaluate the HEp-2 well call (several fields of one well pooled) against single fields.

    python -m tools.eval_hep2_wells [--wells 4] [--fields 3] [--seed 830000] [--calibrate]
                                    [--precision int8|fp32] [--json FILE] [--out PNG]

A lab reads a patient's well in several fields; ``appliance score --assay hep2 --well``
pools their cells into one call (appliance/assays/hep2/well.py). This tool measures what
that is worth. Each well follows the eval's specimen plan (``tools.eval_hep2``: every
stained pattern, negatives, the mixed pairs; ``--wells`` of each) and has ``--fields``
generated fields of one serum through one microscope: the first field draws the pattern
mix, intensity, compound or separate cells, scale and camera; the others keep those and
draw their own cells, focus and bleaching. Every field is scored as the eval scores it
(scale declared), then the well is called from them.

Printed: the eval's specimen figures for the first field of each well (what the eval
measures), for every field alone, and for the wells. Seeds from 830000, ``--fields``
consecutive per well, apart from every other set (the eval 500000+, tuning 600000+,
training 700000-751000, probes and stress 760000-829999, the reference wells 790000+).
Generated data only.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tqdm import tqdm

from appliance.assays.hep2.assay import Hep2Assay
from appliance.assays.hep2.types import Hep2Result
from appliance.assays.hep2.well import call_well
from appliance.config import Hep2IntensityConfig
from tools.eval_hep2 import (
    SpecimenCase,
    SpecimenOutcome,
    calibrated_tool_config,
    outcome_of,
    score_generated,
    specimen_cases,
    specimen_summary,
)
from tools.numbers import save_chart, write_numbers
from tools.synth.hep2_fields import Hep2Field, Hep2FieldSpec

FIRST_SEED = 830_000
DEFAULT_WELLS = 4  # per class: 84 wells
DEFAULT_FIELDS = 3
# The figures compared, as (key in specimen_summary, label); higher is better except the
# false patterns.
FIGURES = (("pattern_accuracy", "pattern (single)"),
           ("positive_negative_agreement", "positive / negative"),
           ("mixed_both_reported", "mixed: both reported"),
           ("mixed_both_competent", "mixed: both, competent level"),
           ("single_with_false_second", "single: false second"),
           ("mixed_with_false_pattern", "mixed: pattern not there"),
           ("intensity_level_agreement", "intensity level"))


@dataclass(frozen=True)
class WellOutcome:
    """A well: each field's outcome alone, and the pooled call's."""

    fields: tuple[SpecimenOutcome, ...]
    well: SpecimenOutcome


def field_specs(case: SpecimenCase, first: Hep2Field, count: int) -> list[Hep2FieldSpec]:
    """The well's other fields: the first field's serum, scale and camera, as drawn; their
    own seeds (after the first's), so their own cells, focus and bleaching."""
    drawn = first.spec
    return [Hep2FieldSpec(seed=case.spec.seed + k, width=drawn.width, height=drawn.height,
                          um_per_px=drawn.um_per_px, patterns=drawn.patterns,
                          intensity=drawn.intensity, camera_seed=drawn.camera_seed,
                          combined=drawn.combined)
            for k in range(1, count)]


def score_fields(assay: Hep2Assay, case: SpecimenCase, fields: int, seq: int
                 ) -> tuple[list[Hep2Field], list[Hep2Result], list[float]]:
    """Generate and score the well's fields one by one: their truths, results and
    milliseconds of scoring."""
    first, _, result, ms = score_generated(assay, case.spec, seq)
    truths, results, times = [first], [result], [ms]
    for k, spec in enumerate(field_specs(case, first, fields), start=1):
        truth, _, result, ms = score_generated(assay, spec, seq * fields + k)
        truths.append(truth)
        results.append(result)
        times.append(ms)
    return truths, results, times


def score_well(assay: Hep2Assay, case: SpecimenCase, fields: int, seq: int,
               levels: Hep2IntensityConfig) -> WellOutcome:
    """Generate and score the well's fields one by one, then pool them."""
    truths, results, times = score_fields(assay, case, fields, seq)
    first = truths[0]
    t0 = time.perf_counter()
    well = call_well(results, assay.cfg.hep2)
    pool_ms = (time.perf_counter() - t0) * 1000.0
    return WellOutcome(
        fields=tuple(outcome_of(case.kind, t, r, m, levels)
                     for t, r, m in zip(truths, results, times, strict=True)),
        well=outcome_of(case.kind, first, well, sum(times) + pool_ms, levels))


def well_cases(per_class: int, fields: int, first_seed: int) -> list[SpecimenCase]:
    """The eval's plan, one case per well, ``fields`` seeds apart."""
    cases = specimen_cases(per_class, first_seed=first_seed)
    return [replace(c, spec=replace(c.spec, seed=first_seed + i * fields))
            for i, c in enumerate(cases)]


def summaries(outcomes: Sequence[WellOutcome]) -> dict[str, dict[str, object]]:
    """The eval's specimen figures for the first fields, every field, and the wells."""
    return {"first_field": specimen_summary([o.fields[0] for o in outcomes]),
            "every_field": specimen_summary([f for o in outcomes for f in o.fields]),
            "well": specimen_summary([o.well for o in outcomes])}


def format_table(figures: dict[str, dict[str, object]], fields: int) -> str:
    """The figures side by side."""
    def cell(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) else "-"

    rows = [f"{'':32s} {'first field':>12s} {'every field':>12s} {f'well of {fields}':>12s}"]
    for key, label in FIGURES:
        rows.append(f"{label:32s} " + " ".join(f"{cell(figures[k][key]):>12s}"
                                               for k in ("first_field", "every_field", "well")))
    rows.append(f"{'specimens':32s} " + " ".join(f"{figures[k]['specimens']!s:>12s}"
                                                 for k in ("first_field", "every_field", "well")))
    return "\n".join(rows)


def changed_calls(outcomes: Sequence[WellOutcome]) -> list[str]:
    """Wells whose call is right where their first field's was wrong, or the other way."""
    lines = []
    for o in outcomes:
        first, well = o.fields[0], o.well
        before = first.pattern_correct and first.sign_correct
        after = well.pattern_correct and well.sign_correct
        if before != after:
            lines.append(f"{'better' if after else 'worse ':6s} seed {first.seed} {first.kind} "
                         f"{first.um_per_px:.2f} um/px truth {'+'.join(first.truth_patterns)}: "
                         f"first field {'+'.join(first.called) or first.status}, well "
                         f"{'+'.join(well.called) or well.status}")
    return lines


def plot(figures: dict[str, dict[str, object]], fields: int, path: Path) -> None:
    """Grouped bars: every field alone against the wells, figure by figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label for _, label in FIGURES]
    fig, ax = plt.subplots(figsize=(10, 4.2))
    width = 0.38
    for j, (key, name) in enumerate((("every_field", "each field alone"),
                                     ("well", f"well of {fields} fields pooled"))):
        values = [figures[key][k] for k, _ in FIGURES]
        xs = [i + (j - 0.5) * width for i in range(len(labels))]
        bars = ax.bar(xs, [v if isinstance(v, float) else 0.0 for v in values], width,
                      label=name)
        for bar, v in zip(bars, values, strict=True):
            if isinstance(v, float):
                ax.annotate(f"{v:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("share of specimens")
    ax.set_title("HEp-2: one field against a well's fields pooled (generated specimens; the "
                 "two 'false' bars: lower is better)", fontsize=9)
    ax.legend(fontsize=8, loc="center right")
    save_chart(fig, path, dpi=110)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(prog="python -m tools.eval_hep2_wells", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wells", type=int, default=DEFAULT_WELLS,
                    help=f"wells per class (default {DEFAULT_WELLS})")
    ap.add_argument("--fields", type=int, default=DEFAULT_FIELDS,
                    help=f"fields per well (default {DEFAULT_FIELDS})")
    ap.add_argument("--seed", type=int, default=FIRST_SEED,
                    help=f"first seed (default {FIRST_SEED})")
    ap.add_argument("--precision", default="int8", choices=("int8", "fp32"))
    ap.add_argument("--models-dir", default="", help="default: the shipped models/")
    ap.add_argument("--config", type=Path, default=None, help="a config file for the box")
    ap.add_argument("--calibrate", action="store_true",
                    help="calibrate the box first as a lab would (as tools.eval_hep2 does)")
    ap.add_argument("--json", type=Path, default=None, help="write all numbers here")
    ap.add_argument("--out", type=Path, default=Path("docs/img/hep2_wells.png"),
                    help="the chart")
    args = ap.parse_args(argv)
    if args.wells < 1 or args.fields < 1:
        ap.error("--wells and --fields must be at least 1")
    if args.seed < 0:
        ap.error(f"--seed {args.seed}: seeds are not negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Score the wells, print the figures and the changed calls, draw the chart."""
    args = parse_args(argv)
    ready = calibrated_tool_config(args)
    if ready is None:
        return 2
    cfg, calibration = ready
    cases = well_cases(args.wells, args.fields, args.seed)
    t0 = time.perf_counter()
    with Hep2Assay.from_config(cfg) as assay:
        levels = assay.cfg.hep2.intensity
        outcomes = [score_well(assay, case, args.fields, i, levels)
                    for i, case in enumerate(tqdm(cases, desc="wells"))]
        model = asdict(assay.model)
    seconds = time.perf_counter() - t0
    figures = summaries(outcomes)
    print(format_table(figures, args.fields))
    changed = changed_calls(outcomes)
    print(f"\nwells whose call differs in rightness from their first field's: {len(changed)}")
    for line in changed:
        print(f"  {line}")
    print(f"{len(cases)} wells of {args.fields} fields (seeds {args.seed}.."
          f"{args.seed + len(cases) * args.fields - 1}) in {seconds:.0f} s; model "
          f"{model['name']} {args.precision}")
    plot(figures, args.fields, args.out)
    print(f"chart: {args.out}")
    if args.json is not None:
        write_numbers(args.json, {
            "run": {"wells_per_class": args.wells, "fields": args.fields,
                    "first_seed": args.seed, "precision": args.precision, "model": model,
                    "calibration": calibration, "seconds": round(seconds, 1)},
            "figures": figures, "changed": changed,
            "outcomes": [{"fields": [asdict(f) for f in o.fields], "well": asdict(o.well)}
                         for o in outcomes]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
