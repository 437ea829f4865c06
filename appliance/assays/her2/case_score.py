"""The case score: the tumour cells of a case's distinct fields, pooled, by ASCO/CAP.

The guideline scores the tumour, not the average field: the percentages are of all the
invasive tumour cells seen, so the cells of every distinct field are pooled and the rule
engine runs once on the pool (a majority vote of field scores would let five weak
fields outvote one 3+ cluster of many cells). Every cell is classified again with the
case's thresholds (nominal, or calibrated by its control) from its measured OD and
completeness, so fields seen before the control was checked count on the same footing.

Two kinds of flag tell the pathologist where to look again:

* heterogeneity: distinct fields whose own score, with the same thresholds, differs from
  the case score (a 3+ cluster in a 1+ tumour);
* borderline: a pooled percentage that decides a branch lies within a margin of the 10%
  cut-off, or the mean membrane OD of the stained cells lies near an intensity threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from appliance.assays.case_views import standing_views
from appliance.assays.her2.control import CellReading, classify_readings
from appliance.assays.her2.rules import membrane_percentages, score_field
from appliance.assays.her2.types import Category, FieldScore, MembraneClass, Score
from appliance.config import CaseConfig, MeasureConfig, RulesConfig

_THRESHOLD_NAMES = ("faint", "moderate", "strong")


@dataclass(frozen=True)
class CaseField:
    """One tumour field of a case as the pooling sees it."""

    number: int  # 1-based order of the field in the case
    scored: bool  # the field itself passed the quality gates and was scored
    cells: tuple[CellReading, ...]
    duplicate_of: int | None = None  # number of the earlier view of the same field
    superseded_by: int | None = None  # number of the later field whose report replaced it


@dataclass(frozen=True)
class FieldVerdict:
    """A field's place in the case: counted or not, and its own score."""

    number: int
    counted: bool
    score: Score | None  # own score with the case's thresholds (None: not scorable)
    tumour_cells: int
    note: str  # why not counted, or how it differs; "" when nothing to say


@dataclass(frozen=True)
class CaseScore:
    """The pooled verdict of a case, with its flags."""

    score: Score | None
    category: Category | None
    rule: str  # the deciding ASCO/CAP branch, or why the case is not scorable
    fields_counted: int
    fields_total: int
    tumour_cells: int
    percent: dict[MembraneClass, float]
    mean_od: float | None  # mean membrane OD of the stained pooled cells
    fields: tuple[FieldVerdict, ...]
    heterogeneity: tuple[str, ...]
    borderline: tuple[str, ...]


def counted_fields(fields: Sequence[CaseField]) -> set[int]:
    """Numbers of the fields that count: per group of views of one field, the first scored
    one that no later report superseded (:func:`appliance.assays.case_views.standing_views`).

    A field looked at twice is one field; if its first view was not scorable (out of
    focus) and a later one scored, the later one stands for it.
    """
    scored = {f.number for f in fields if f.scored}
    return standing_views(fields) & scored


def score_case(fields: Sequence[CaseField], thresholds: Sequence[float], *,
               measure: MeasureConfig, rules: RulesConfig, case: CaseConfig) -> CaseScore:
    """Pool the cells of the distinct scored fields and score them as one tumour."""
    counted = counted_fields(fields)
    pooled: list[CellReading] = []
    own: dict[int, Score | None] = {}
    for f in fields:
        if f.number in counted:
            pooled.extend(f.cells)
        verdict = score_field(classify_readings(f.cells, thresholds, measure), rules)
        own[f.number] = verdict.score if isinstance(verdict, FieldScore) else None
    classes = classify_readings(pooled, thresholds, measure)
    verdict = score_field(classes, rules)
    stained = [c.intensity_od for c, k in zip(pooled, classes, strict=True)
               if k is not MembraneClass.NONE]
    mean_od = sum(stained) / len(stained) if stained else None
    scored = isinstance(verdict, FieldScore)
    case_score = verdict.score if isinstance(verdict, FieldScore) else None
    verdicts = tuple(_field_verdict(f, f.number in counted, own[f.number], case_score)
                     for f in fields)
    heterogeneity = tuple(
        f"field {v.number} scores {v.score.value if v.score else '-'} "
        f"(case {case_score.value if case_score else '-'}): {v.tumour_cells} tumour cells"
        for v in verdicts if v.counted and case_score is not None and v.score is not None
        and v.score is not case_score)
    return CaseScore(
        score=case_score,
        category=verdict.category if isinstance(verdict, FieldScore) else None,
        rule=verdict.rule if isinstance(verdict, FieldScore) else verdict.reason,
        fields_counted=len(counted), fields_total=len(fields), tumour_cells=len(pooled),
        percent=membrane_percentages(classes), mean_od=mean_od, fields=verdicts,
        heterogeneity=heterogeneity,
        borderline=borderline_flags(classes, mean_od, thresholds, rules, case) if scored else (),
    )


def _field_verdict(f: CaseField, counted: bool, own: Score | None,
                   case_score: Score | None) -> FieldVerdict:
    if f.superseded_by is not None:
        note = f"superseded by field {f.superseded_by} (read again): not counted"
    elif not f.scored:
        note = "not scorable"
    elif not counted:
        note = f"same field as field {f.duplicate_of}: counted once"
    elif own is None:
        note = "too few tumour cells to score alone (cells pooled)"
    elif case_score is not None and own is not case_score:
        note = f"differs from the case score ({case_score.value})"
    else:
        note = ""
    return FieldVerdict(f.number, counted, own, len(f.cells), note)


def borderline_flags(classes: Sequence[MembraneClass], mean_od: float | None,
                     thresholds: Sequence[float], rules: RulesConfig,
                     case: CaseConfig) -> tuple[str, ...]:
    """Pooled percentages near the cut-off and a mean intensity near a threshold, in words."""
    n = len(classes)
    if n == 0:
        return ()
    cut, margin = rules.positive_percent, case.borderline_margin_percent

    def pct(wanted: set[MembraneClass]) -> float:
        return 100.0 * sum(c in wanted for c in classes) / n

    intense = {MembraneClass.COMPLETE_INTENSE}
    complete = intense | {MembraneClass.COMPLETE_WEAK_MODERATE}
    groups = (
        ("complete intense staining (3+ vs 2+)", pct(intense)),
        ("complete staining (2+ vs 1+)", pct(complete)),
        ("moderate-to-intense incomplete staining (2+ vs 1+)",
         pct({MembraneClass.INCOMPLETE_MODERATE_INTENSE})),
        ("any membrane staining (1+ vs 0)", pct(set(MembraneClass) - {MembraneClass.NONE})),
    )
    flags = [f"{name}: {p:.1f}% of tumour cells is within {margin:g} points of the {cut:g}% "
             "cut-off" for name, p in groups if abs(p - cut) <= margin]
    if mean_od is not None:
        for name, t in zip(_THRESHOLD_NAMES, thresholds, strict=True):
            if abs(mean_od - t) <= case.borderline_od_margin:
                flags.append(f"mean membrane intensity {mean_od:.2f} OD is within "
                             f"{case.borderline_od_margin:g} of the {name} threshold {t:.2f}")
    return tuple(flags)
