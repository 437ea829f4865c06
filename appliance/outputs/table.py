"""The short human-readable table of field results printed by `score` and `run`."""

from __future__ import annotations

from pathlib import Path

from appliance.assays.hep2.types import Hep2Result
from appliance.assays.hep2.well import Hep2WellResult
from appliance.assays.her2.types import FieldResult, MembraneClass

_ORDER = (
    (MembraneClass.COMPLETE_INTENSE, "3+c"),
    (MembraneClass.COMPLETE_WEAK_MODERATE, "2+c"),
    (MembraneClass.INCOMPLETE_MODERATE_INTENSE, "2+i"),
    (MembraneClass.INCOMPLETE_FAINT, "1+i"),
    (MembraneClass.NONE, "neg"),
)

HEADER = (f"{'#':>4}  {'field':<28} {'score':<5} {'category':<14} {'cells':>5}  "
          + " ".join(f"{name:>5}" for _, name in _ORDER) + "  note")


def format_row(result: FieldResult) -> str:
    """One line per field: score, category, tumour cells, percent per class, reason."""
    name = Path(result.file).name[-28:]
    if result.scored and result.score is not None and result.category is not None:
        pct = " ".join(f"{result.percent.get(c, 0.0):5.1f}" for c, _ in _ORDER)
        note = "; ".join([*_replaces(result), *result.warnings])
        return (f"{result.seq:>4}  {name:<28} {result.score.value:<5} "
                f"{result.category.value:<14} {result.tumour_cells:>5}  {pct}  {note}")
    blank = " ".join(f"{'-':>5}" for _ in _ORDER)
    reason = "; ".join([*_replaces(result), result.reason or ""])
    return (f"{result.seq:>4}  {name:<28} {'-':<5} {'NOT SCORABLE':<14} "
            f"{result.tumour_cells:>5}  {blank}  {reason}")


def _replaces(result: FieldResult | Hep2Result) -> list[str]:
    """The note of a report that supersedes another (pipeline.md, "Report-once rules")."""
    ref = result.supersedes
    if ref is None:
        return []
    why = {"settings_changed": "read again under new settings",
           "sharper": "sharper view"}.get(ref.reason, "now scorable")
    return [f"replaces #{ref.seq} ({why})"]


HEP2_HEADER = (f"{'#':>4}  {'field':<28} {'result':<8} {'intensity':<22} {'cells':>5}  "
               "pattern(s)")


def format_hep2_row(result: Hep2Result) -> str:
    """One line per HEp-2 field: positive/negative, intensity, cells, pattern(s) with AC codes."""
    return _hep2_line(f"{result.seq:>4}", Path(result.file).name[-28:], result,
                      len(result.cells), _replaces(result))


def format_hep2_well_row(well: Hep2WellResult) -> str:
    """The line of a well under its fields' lines: the pooled call."""
    name = f"well of {len(well.fields)} field" + ("s" if len(well.fields) != 1 else "")
    if well.fields_refused:
        name += f" (+{len(well.fields_refused)} left out)"
    return _hep2_line("well", name, well, well.cells_interphase + well.cells_mitotic)


def _hep2_line(label: str, name: str, r: Hep2Result | Hep2WellResult, cells: int,
               first: list[str] | None = None) -> str:
    first = first or []
    if not r.scored:
        reason = "; ".join([*first, r.reason or ""])
        return f"{label}  {name:<28} {'-':<8} {'NOT SCORABLE':<22} {cells:>5}  {reason}"
    verdict = "positive" if r.positive else "negative"
    intensity = f"{r.intensity_level} ({r.intensity_units or 0:.0f})"
    patterns = ", ".join(f"{p.icap} {p.name} {100 * p.share:.0f}%" for p in r.patterns)
    note = "; ".join([*first, *r.warnings])
    return (f"{label}  {name:<28} {verdict:<8} {intensity:<22} {cells:>5}  {patterns}"
            + (f"  ({note})" if note else ""))
