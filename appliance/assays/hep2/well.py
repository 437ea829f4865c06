"""A well's call from several of its fields: the cells pooled, the specimen rules once.

A lab reads a patient's well in several fields, not one: a 40x field may hold a dozen
cells, a second pattern may show in a fifth of them, and the metaphases that tell AC-1
from AC-4/5 are a few per field. So the fields of one well are scored one by one (each
keeps its own result) and their classified cells are then pooled:

- **intensity**: the median brightness of every whole interphase cell of the scored fields
  (a field with no cell gives its own whole-field reading when no field has a cell);
- **pattern(s)**: the specimen rules (``specimen.call_specimen``) over the pooled cells, so
  the shares, the mixed patterns and the metaphase evidence count every field's cells;
- **scale**: the coarsest field's, so a well with a 10x field gets the 10x subtype
  warnings;
- **refused fields** (out of focus, wrong stain, ...) are listed and left out; with no
  field scored the well is not scorable.
- **warnings**: each field's own (quality, scale, calibration), once each, then the
  pooled rules'. A field's rule warnings (too few cells, borderline) are left out: the
  pooled call makes its own.
- **a field unlike the others** (:func:`odd_field_warnings`): one that reads far brighter
  or dimmer than the pooled cells, or whose own pattern no other field shows, may be a
  field of another well given by mistake; the call stands, with a warning naming it.

Pure: it only reads the fields' results, so it is tested without a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from appliance.assays.hep2.specimen import call_specimen, look_alikes, too_coarse_for_subtypes
from appliance.assays.hep2.types import Hep2Cell, Hep2Result, PatternCall
from appliance.assays.her2.types import ModelRef
from appliance.config import Hep2Config


@dataclass(frozen=True)
class Hep2WellResult:
    """One well's call from the fields pooled into it."""

    fields: tuple[str, ...]  # the scored fields pooled (their files / sources)
    fields_refused: tuple[str, ...]  # fields left out, each "FILE: reason"
    status: str  # "scored" | "not_scorable"
    model: ModelRef  # the fields' (the first field's when none was scored)
    reason: str | None = None
    reason_code: str | None = None
    positive: bool | None = None
    intensity_level: str | None = None
    intensity_units: float | None = None
    intensity_calibrated: bool = False  # every pooled field calibrated
    patterns: tuple[PatternCall, ...] = ()
    cells_interphase: int = 0
    cells_mitotic: int = 0
    warnings: tuple[str, ...] = ()
    um_per_px: float | None = None  # the coarsest pooled field's
    # (file, results-store row id) of each field given, in order, once they are stored.
    stored_fields: tuple[tuple[str, int], ...] = ()
    # The scored fields unlike the others (another well's, given by mistake?); the
    # warnings say how.
    odd_fields: tuple[str, ...] = ()

    @property
    def scored(self) -> bool:
        return self.status == "scored"


def field_warnings(result: Hep2Result, cfg: Hep2Config) -> list[str]:
    """The field's warnings that are not its specimen rules' (those the pooled call
    makes again): the rules are pure, so they are run again on the field to tell."""
    if not result.scored or result.intensity_units is None:
        return list(result.warnings)
    own = call_specimen(result.cells, result.intensity_units, specimen=cfg.specimen,
                        intensity=cfg.intensity, um_per_px=result.um_per_px).warnings
    return [w for w in result.warnings if w not in own]


def pooled_intensity(results: Sequence[Hep2Result]) -> float:
    """Median brightness of the whole interphase cells of all ``results`` (scored fields):
    of all their interphase cells when none is whole, and of the fields' own readings
    when no field has a cell (a negative well may show none)."""
    cells = [c for r in results for c in r.cells if not c.mitotic]
    whole = [c.brightness for c in cells if not c.touches_edge]
    values = whole or [c.brightness for c in cells]
    if values:
        return float(np.median(values))
    return float(np.median([r.intensity_units for r in results
                            if r.intensity_units is not None]))


# A field whose own reading is this many times the well's, or less than its inverse, with
# either above the cut-off, is named. Measured (tools/probe_hep2_well_mixup.py): fields of
# 84 generated wells (one serum, each field its own cells, focus and bleaching) read at
# most 1.36 times their well's; a swapped-in field of another well, over 2 in 0.42 of
# wells (by pattern too, 0.85). Not 1.5: a real well varies more than generated fields.
ODD_INTENSITY_RATIO = 2.0


def intensity_ratio(own: float | None, units: float, cut: float) -> float | None:
    """A field's reading over its well's, when one of the two is above the cut-off ``cut``
    (None otherwise: fields of a negative well differ a lot in proportion, and mean
    nothing by it)."""
    if own is None or not own > 0 or not units > 0 or max(own, units) < cut:
        return None
    return own / units


def unshared_pattern(field: Hep2Result, scored: Sequence[Hep2Result], *, coarse: bool
                     ) -> PatternCall | None:
    """The field's own first pattern when no other scored field of the well reports it
    or a look-alike of it (None when others do, or there is nothing to compare)."""
    first = field.patterns[0] if field.positive and field.patterns else None
    others = {p.name for o in scored if o is not field and o.positive for p in o.patterns}
    if first is None or not others or any(
            first.name == n or look_alikes(first.name, n, coarse=coarse) for n in others):
        return None
    return first


def odd_field_warnings(scored: Sequence[Hep2Result], units: float,
                       um_per_px: float | None, cfg: Hep2Config) -> list[tuple[str, str]]:
    """(file, warning) for each scored field unlike its well: reading more than
    ``ODD_INTENSITY_RATIO`` times the well's intensity or less than its inverse
    (:func:`intensity_ratio`), or calling on its own a first pattern that no other field
    reports, nor a look-alike of one (:func:`unshared_pattern`). Such a field may be
    another well's, given by mistake. (The well's own call cannot tell: a foreign field's
    cells are a third of a well of three, so its pattern is reported as a mixed one.)"""
    coarse = too_coarse_for_subtypes(um_per_px, cfg.specimen)
    out = []
    for r in scored:
        ratio = intensity_ratio(r.intensity_units, units, cfg.intensity.negative_below)
        if ratio is not None and max(ratio, 1.0 / ratio) > ODD_INTENSITY_RATIO:
            out.append((r.file, f"{r.file} reads {r.intensity_units:.0f} units, {ratio:.2g} "
                        f"times the well's {units:.0f}: a field of another well? Check that "
                        "every field is of this well"))
        alone = unshared_pattern(r, scored, coarse=coarse)
        if alone is not None:
            out.append((r.file, f"{r.file} reads {alone.icap} {alone.label}, which no other "
                        "field of the well shows: a field of another well? Check that every "
                        "field is of this well"))
    return out


def call_well(results: Sequence[Hep2Result], cfg: Hep2Config) -> Hep2WellResult:
    """Pool the scored fields of one well into one call (see the module docstring).

    Raises ValueError for no fields, or fields scored by different models (a model
    changed between them: their cells do not pool).
    """
    if not results:
        raise ValueError("a well needs at least one field")
    scored = [r for r in results if r.scored and r.intensity_units is not None]
    refused = tuple(f"{r.file}: {r.reason or r.status}" for r in results if r not in scored)
    models = {(r.model.name, r.model.sha256) for r in scored}
    if len(models) > 1:
        raise ValueError("the well's fields were scored by different models: "
                         + ", ".join(sorted(name for name, _ in models)))
    if not scored:
        return Hep2WellResult(
            fields=(), fields_refused=refused, status="not_scorable",
            model=results[0].model, reason="no field of the well could be scored",
            reason_code="no_scorable_field")
    units = pooled_intensity(scored)
    cells: list[Hep2Cell] = [c for r in scored for c in r.cells]
    scales = [r.um_per_px for r in scored if r.um_per_px is not None]
    um_per_px = max(scales) if scales else None
    call = call_specimen(cells, units, specimen=cfg.specimen, intensity=cfg.intensity,
                         um_per_px=um_per_px)
    warnings = list(dict.fromkeys(w for r in scored for w in field_warnings(r, cfg)))
    odd = odd_field_warnings(scored, units, um_per_px, cfg) if len(scored) > 1 else []
    warnings += [w for _, w in odd]
    if refused:
        warnings.append(f"{len(refused)} of {len(results)} fields could not be scored and "
                        "are left out")
    interphase = sum(not c.mitotic for c in cells)
    return Hep2WellResult(
        fields=tuple(r.file for r in scored), fields_refused=refused,
        status="scored" if call.positive is not None else "not_scorable",
        model=scored[0].model, reason=call.reason, reason_code=call.reason_code,
        positive=call.positive, intensity_level=call.intensity_level, intensity_units=units,
        intensity_calibrated=all(r.intensity_calibrated for r in scored),
        patterns=call.patterns, cells_interphase=interphase,
        cells_mitotic=len(cells) - interphase, warnings=(*warnings, *call.warnings),
        um_per_px=um_per_px, odd_fields=tuple(dict.fromkeys(f for f, _ in odd)))
