"""Positive-control check and threshold calibration: pure functions over measured cells.

The pathologist shows the box the control tissue stained in the same run as the tumour
(on-slide or batch control) and says what level it should show. The box decides:

1. Enough tumour cells were measured over the control's fields (``min_cells``).
2. For a 3+ or 2+ control, the stain strength: the median membrane DAB OD of the
   completely stained cells against the lab's reference for that level. A ratio outside
   [``min_ratio``, ``max_ratio``] fails the control: the run is too weak or too strong
   for any correction to be trusted (the stain must be repeated).
3. With calibration on, the case's intensity thresholds scale by that ratio. Optical
   density is proportional to the amount of DAB (Beer-Lambert), so a run that deposits
   70% of the usual DAB reads 70% of the usual OD on every membrane, control and tumour
   alike; thresholds × 0.7 classify its membranes as a normal run would.
4. The control, classified with the thresholds the case will use, must score its level,
   and the share of its cells stained at that level must reach ``min_percent``
   (e.g. most cells complete and intense for a 3+ control).

A 1+ (or 0) control is checked but never calibrates: its faint membranes sit at the
faint cut, where the membranes below it are not measured at all, so their median is
biased upwards exactly when the stain is weak.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace

from appliance.assays.her2.rules import classify_cell, score_field
from appliance.assays.her2.types import FieldScore, MembraneClass
from appliance.config import (
    CALIBRATING_LEVELS,
    CONTROL_LEVELS,
    ControlConfig,
    MeasureConfig,
    RulesConfig,
)

# Fewer completely stained cells than this give no stable median OD.
MIN_COMPLETE_CELLS = 10


@dataclass(frozen=True)
class CellReading:
    """What is kept of a measured tumour cell for pooling: its membrane numbers."""

    intensity_od: float
    completeness: float


@dataclass(frozen=True)
class Calibration:
    """The intensity thresholds a case measures with, and where they come from."""

    factor: float  # 1.0 = nominal
    thresholds: tuple[float, float, float]  # faint, moderate, strong (DAB OD)
    source: str  # "nominal" | "control"

    def short(self) -> str:
        """A few words for the live panel."""
        return ("nominal thresholds" if self.source == "nominal"
                else f"thresholds x{self.factor:.2f} (calibrated)")

    def describe(self) -> str:
        """In words, for the overlay and the report."""
        od = " / ".join(f"{t:.3f}" for t in self.thresholds)
        if self.source == "nominal":
            return f"nominal thresholds ({od} OD)"
        return f"calibrated by the control: thresholds x{self.factor:.2f} ({od} OD)"


def nominal(measure: MeasureConfig) -> Calibration:
    """The configured thresholds, uncalibrated."""
    t = measure.intensity_thresholds
    return Calibration(1.0, (t[0], t[1], t[2]), "nominal")


def scaled(measure: MeasureConfig, factor: float) -> Calibration:
    """The configured thresholds times ``factor`` (a control's measured / reference OD)."""
    t = measure.intensity_thresholds
    return Calibration(factor, (t[0] * factor, t[1] * factor, t[2] * factor), "control")


@dataclass(frozen=True)
class ControlCheck:
    """The decision on one control check, with everything it was based on."""

    expected: str  # "0" | "1+" | "2+" | "3+"
    valid: bool
    reasons: tuple[str, ...]  # why it failed, or what passed, in words
    fields: int
    cells: int
    measured_score: str | None  # the control's own score with the case's thresholds
    percent_at_level: float  # share of cells stained as the level requires
    measured_od: float | None  # median membrane OD of the completely stained cells
    reference_od: float | None
    ratio: float | None  # measured_od / reference_od
    calibration: Calibration  # what the case measures with after this check

    def to_dict(self) -> dict[str, object]:
        """JSON-ready (stored with the case and sent in the ``case`` message)."""
        c = self.calibration
        return {
            "expected": self.expected, "valid": self.valid, "reasons": list(self.reasons),
            "fields": self.fields, "cells": self.cells, "measured_score": self.measured_score,
            "percent_at_level": round(self.percent_at_level, 1),
            "measured_od": None if self.measured_od is None else round(self.measured_od, 4),
            "reference_od": self.reference_od,
            "ratio": None if self.ratio is None else round(self.ratio, 4),
            "calibration": {"factor": round(c.factor, 4), "source": c.source,
                            "thresholds": [round(t, 4) for t in c.thresholds]},
        }


def classify_readings(cells: Sequence[CellReading], thresholds: Sequence[float],
                      measure: MeasureConfig) -> list[MembraneClass]:
    """Membrane classes of pooled cells under the given intensity thresholds."""
    cfg = replace(measure, intensity_thresholds=list(thresholds))
    return [classify_cell(c.intensity_od, c.completeness, cfg)[1] for c in cells]


def _percent_at_level(classes: Sequence[MembraneClass], expected: str) -> tuple[float, str]:
    """Share of cells showing the expected level's staining, and its name in words."""
    n = len(classes) or 1
    if expected == "3+":
        wanted = {MembraneClass.COMPLETE_INTENSE}
        words = "complete intense"
    elif expected == "2+":
        wanted = {MembraneClass.COMPLETE_INTENSE, MembraneClass.COMPLETE_WEAK_MODERATE}
        words = "complete"
    else:
        wanted = set(MembraneClass) - {MembraneClass.NONE}
        words = "any membrane"
    return 100.0 * sum(c in wanted for c in classes) / n, words


def evaluate_control(fields: Sequence[Sequence[CellReading]], expected: str, *,
                     measure: MeasureConfig, rules: RulesConfig,
                     control: ControlConfig) -> ControlCheck:
    """Decide whether the control shows its expected level, and the case's calibration."""
    if expected not in CONTROL_LEVELS:
        raise ValueError(f"expected control level {expected!r} is not 0, 1+, 2+ or 3+")
    cells = [c for f in fields for c in f]
    n = len(cells)
    reasons: list[str] = []

    def fail(*why: str) -> ControlCheck:
        return ControlCheck(expected, False, tuple(reasons) + why, len(fields), n, None, 0.0,
                            measured_od, reference, ratio, nominal(measure))

    measured_od = reference = ratio = None
    if n < control.min_cells:
        return fail(f"too few tumour cells measured in the control ({n} < {control.min_cells}): "
                    "show more control fields")
    complete = [c.intensity_od for c in cells
                if c.completeness >= measure.complete_fraction and c.intensity_od > 0]
    reference = control.reference_od.get(expected)
    calibration = nominal(measure)
    if expected in CALIBRATING_LEVELS:
        if len(complete) < MIN_COMPLETE_CELLS:
            return fail(f"only {len(complete)} completely stained cells in a {expected} "
                        f"control (need {MIN_COMPLETE_CELLS})")
        measured_od = float(statistics.median(complete))
        if reference is not None:
            ratio = measured_od / reference
            if ratio < control.min_ratio:
                return fail(f"stain too weak: membranes {measured_od:.2f} OD, {ratio:.2f} x the "
                            f"reference {reference:g} (minimum {control.min_ratio:g} x)")
            if ratio > control.max_ratio:
                return fail(f"stain too strong: membranes {measured_od:.2f} OD, {ratio:.2f} x the "
                            f"reference {reference:g} (maximum {control.max_ratio:g} x)")
            reasons.append(f"stain strength {ratio:.2f} x the reference ({measured_od:.2f} OD "
                           f"vs {reference:g})")
            if control.calibration:
                calibration = scaled(measure, ratio)
    thresholds = calibration.thresholds
    classes = classify_readings(cells, thresholds, measure)
    verdict = score_field(classes, rules)
    score = verdict.score.value if isinstance(verdict, FieldScore) else None
    percent, words = _percent_at_level(classes, expected)
    need = control.min_percent.get(expected, 0.0)
    problems = []
    if score != expected:
        problems.append(f"the control scores {score or 'not scorable'}, expected {expected}")
    if expected != "0" and percent < need:
        problems.append(f"{words} staining in {percent:.0f}% of its tumour cells "
                        f"(a {expected} control needs at least {need:g}%)")
    if problems:
        return ControlCheck(expected, False, tuple(reasons + problems), len(fields), n, score,
                            percent, measured_od, reference, ratio, nominal(measure))
    reasons.append(f"scores {score} with {words} staining in {percent:.0f}% of {n} tumour cells")
    return ControlCheck(expected, True, tuple(reasons), len(fields), n, score, percent,
                        measured_od, reference, ratio, calibration)
