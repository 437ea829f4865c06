"""The short human-readable table of field results printed by `score` and `run`."""

from __future__ import annotations

from pathlib import Path

from appliance.assays.hep2.types import Hep2Result
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
        note = "; ".join(result.warnings)
        return (f"{result.seq:>4}  {name:<28} {result.score.value:<5} "
                f"{result.category.value:<14} {result.tumour_cells:>5}  {pct}  {note}")
    blank = " ".join(f"{'-':>5}" for _ in _ORDER)
    return (f"{result.seq:>4}  {name:<28} {'-':<5} {'NOT SCORABLE':<14} "
            f"{result.tumour_cells:>5}  {blank}  {result.reason}")


HEP2_HEADER = (f"{'#':>4}  {'field':<28} {'result':<8} {'intensity':<22} {'cells':>5}  "
               "pattern(s)")


def format_hep2_row(result: Hep2Result) -> str:
    """One line per HEp-2 field: positive/negative, intensity, cells, pattern(s) with AC codes."""
    name = Path(result.file).name[-28:]
    cells = len(result.cells)
    if not result.scored:
        return (f"{result.seq:>4}  {name:<28} {'-':<8} {'NOT SCORABLE':<22} {cells:>5}  "
                f"{result.reason}")
    verdict = "positive" if result.positive else "negative"
    intensity = f"{result.intensity_level} ({result.intensity_units or 0:.0f})"
    patterns = ", ".join(f"{p.icap} {p.name} {100 * p.share:.0f}%" for p in result.patterns)
    note = "; ".join(result.warnings)
    return (f"{result.seq:>4}  {name:<28} {verdict:<8} {intensity:<22} {cells:>5}  {patterns}"
            + (f"  ({note})" if note else ""))
