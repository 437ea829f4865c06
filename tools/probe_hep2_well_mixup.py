"""Does a HEp-2 well call notice a field of another well given by mistake?

    python -m tools.probe_hep2_well_mixup [--wells 2] [--fields 3] [--seed 840000]
                                          [--out-dir build/probe] [--json FILE]

``appliance score --assay hep2 --well`` pools whatever fields it is given. A field of
another patient's well among them changes the call, so the well names a field unlike the
others (``well.odd_field_warnings``): one that reads far brighter or dimmer than the well,
or whose own pattern no other field shows. This measures both sides of that check:

- **true wells**: generated as ``tools.eval_hep2_wells`` makes them (the eval's plan,
  ``--wells`` of each kind; ``--fields`` fields of one serum and microscope, each with its
  own cells, focus and bleaching): how often a field is named although all are the well's;
- **mixed-up wells**: the same wells with the last field swapped for the last field of
  the next well of the plan (another pattern, or the negative, or a mix): how often the
  foreign field is named.

Printed for several intensity ratios (the shipped limit is ``ODD_INTENSITY_RATIO``): the
share of true wells with a false warning and of mixed-up wells caught, by intensity,
by pattern, and by either. Writes the ratio of each well's most different field as a
chart (``OUT_DIR/hep2_well_mixup.png``). Seeds 840000+, apart from every other set.
Generated data only: real wells vary more from field to field (the well's edge, other
cells), so real false warnings will be more frequent than these.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from appliance.assays.hep2.assay import Hep2Assay
from appliance.assays.hep2.specimen import too_coarse_for_subtypes
from appliance.assays.hep2.types import Hep2Result
from appliance.assays.hep2.well import (
    ODD_INTENSITY_RATIO,
    call_well,
    intensity_ratio,
    unshared_pattern,
)
from appliance.config import Hep2Config
from tools.eval_hep2 import tool_config
from tools.eval_hep2_wells import score_fields, well_cases
from tools.numbers import save_chart, write_numbers

FIRST_SEED = 840_000
RATIOS = (1.5, 2.0, 2.5, 3.0, 4.0)


@dataclass(frozen=True)
class WellCheck:
    """One well (true or mixed up): its fields' ratios to it and what the check names."""

    seed: int
    mixed_up: bool
    truth: str  # the well's kind and patterns, e.g. "single centromere"
    foreign: str  # the swapped-in field's truth ("" for a true well)
    ratio: float  # the largest of each field's intensity over the well's, either way
    pattern_named: bool  # a field named for its own pattern
    status: str


def check(results: Sequence[Hep2Result], cfg: Hep2Config, seed: int, truth: str,
          foreign: str = "") -> WellCheck:
    """Pool ``results`` and measure how unlike the well its most different field is, with
    the well's own measures (``well.intensity_ratio``, ``well.unshared_pattern``)."""
    well = call_well(results, cfg)
    scored = [r for r in results if r.scored and r.intensity_units is not None]
    units = well.intensity_units or 0.0
    ratios = [x for r in scored if (x := intensity_ratio(
        r.intensity_units, units, cfg.intensity.negative_below)) is not None]
    coarse = too_coarse_for_subtypes(well.um_per_px, cfg.specimen)
    return WellCheck(seed=seed, mixed_up=bool(foreign), truth=truth, foreign=foreign,
                     ratio=round(max((max(x, 1.0 / x) for x in ratios), default=1.0), 3),
                     pattern_named=any(unshared_pattern(r, scored, coarse=coarse) is not None
                                       for r in scored),
                     status=well.status)


def rates(checks: Sequence[WellCheck]) -> list[dict[str, object]]:
    """For each ratio limit: true wells with a warning, mixed-up wells caught."""
    true = [c for c in checks if not c.mixed_up]
    mixed = [c for c in checks if c.mixed_up]
    out: list[dict[str, object]] = []
    for limit in RATIOS:
        def named(c: WellCheck, limit: float = limit) -> tuple[bool, bool]:
            return c.ratio > limit, c.ratio > limit or c.pattern_named
        out.append({
            "ratio": limit,
            "true_by_intensity": _share([named(c)[0] for c in true]),
            "true_either": _share([named(c)[1] for c in true]),
            "mixed_by_intensity": _share([named(c)[0] for c in mixed]),
            "mixed_either": _share([named(c)[1] for c in mixed])})
    return out


def _share(flags: Sequence[bool]) -> float | None:
    return round(sum(flags) / len(flags), 3) if flags else None


def format_rates(table: Sequence[dict[str, object]], checks: Sequence[WellCheck]) -> str:
    """The trade, one line per ratio limit, and the pattern check alone."""
    true = [c for c in checks if not c.mixed_up]
    mixed = [c for c in checks if c.mixed_up]
    lines = [f"{len(true)} true wells, {len(mixed)} mixed-up wells; a field named for its "
             f"own pattern: true {_share([c.pattern_named for c in true])}, mixed-up "
             f"{_share([c.pattern_named for c in mixed])}",
             f"{'ratio':>6s} {'true: by intensity':>19s} {'true: either':>13s} "
             f"{'mixed: by intensity':>20s} {'mixed: either':>14s}"]
    for row in table:
        mark = "  (shipped)" if row["ratio"] == ODD_INTENSITY_RATIO else ""
        lines.append(f"{row['ratio']!s:>6s} {row['true_by_intensity']!s:>19s} "
                     f"{row['true_either']!s:>13s} {row['mixed_by_intensity']!s:>20s} "
                     f"{row['mixed_either']!s:>14s}{mark}")
    return "\n".join(lines)


def plot(checks: Sequence[WellCheck], path: Path) -> None:
    """Each well's most different field, true wells against mixed-up ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    bins = [float(b) for b in np.logspace(0, np.log10(max(20.0, *(c.ratio for c in checks))),
                                          30)]
    for mixed, colour, label in ((False, "#0072b2", "true wells"),
                                 (True, "#d55e00", "a field of the next well swapped in")):
        ax.hist([c.ratio for c in checks if c.mixed_up == mixed], bins=bins, alpha=0.6,
                color=colour, label=label)
    ax.axvline(ODD_INTENSITY_RATIO, color="k", ls="--", lw=1,
               label=f"limit {ODD_INTENSITY_RATIO:g}")
    ax.set_xscale("log")
    ax.set_xlabel("most different field: its intensity / the well's, either way")
    ax.set_ylabel("wells")
    ax.set_title("HEp-2 wells: is a field of another well noticed? (generated)", fontsize=10)
    ax.legend(fontsize=8)
    save_chart(fig, path, dpi=110)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(prog="python -m tools.probe_hep2_well_mixup",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wells", type=int, default=2, help="wells of each kind of the plan")
    ap.add_argument("--fields", type=int, default=3)
    ap.add_argument("--seed", type=int, default=FIRST_SEED)
    ap.add_argument("--out-dir", default="build/probe")
    ap.add_argument("--json", default="")
    ap.add_argument("--config", type=Path, default=None, help="score with this config file")
    ap.add_argument("--precision", default="int8", choices=("int8", "fp32"))
    ap.add_argument("--models-dir", default="", help="default: the shipped models/")
    args = ap.parse_args(argv)
    if args.fields < 2:
        ap.error("--fields: a well needs at least 2 fields to compare")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Score the wells' fields once, then check every true and mixed-up well."""
    args = parse_args(argv)
    cfg = tool_config(args)
    if cfg is None:
        return 2
    cases = well_cases(args.wells, args.fields, args.seed)
    wells: list[list[Hep2Result]] = []
    truths: list[str] = []
    with Hep2Assay.from_config(cfg) as assay:
        for i, case in enumerate(tqdm(cases, desc="wells")):
            drawn, results, _ = score_fields(assay, case, args.fields, i)
            wells.append(results)
            truths.append(f"{case.kind} {'+'.join(drawn[0].patterns)}")
    checks = []
    for i, results in enumerate(wells):
        seed = cases[i].spec.seed
        checks.append(check(results, cfg.hep2, seed, truths[i]))
        j = (i + 1) % len(wells)
        checks.append(check([*results[:-1], wells[j][-1]], cfg.hep2, seed, truths[i],
                            truths[j]))
    table = rates(checks)
    print(format_rates(table, checks))
    chart = Path(args.out_dir) / "hep2_well_mixup.png"
    plot(checks, chart)
    print(f"chart: {chart}")
    if args.json:
        write_numbers(Path(args.json), {"rates": table, "wells": [c.__dict__ for c in checks]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
