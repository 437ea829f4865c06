"""A HEp-2 kit control check: does the control well read as the kit says it should?

Every IIF run carries the kit's controls on its slide: a negative control serum, and a
positive one with a stated pattern (most kits: homogeneous, AC-1). The box reads a control
well as it reads a patient's (its fields pooled, ``well.call_well``) and checks the call:

- **negative** expected: the well must read negative (below the cut-off);
- a **pattern** expected (class name or ICAP code): the well must read positive with that
  pattern first. A look-alike subtype first (dense fine speckled for fine speckled) fails
  too, with the reason saying so: the control is what shows that the box tells them apart
  on this microscope. On a 10x field the reason asks for 20x or 40x.
- the kit's positive control (the pattern of ``hep2.control.default_expected``), when the
  lab has set ``hep2.control.positive_units``: its intensity must also lie in that range of
  calibrated units, the lab's own quality-control limits. A drifting lamp or a weakening
  kit shows there before the patients' calls change. Measured without calibration, the
  units cannot be compared, and the control fails saying so.

- the kit's positive control, when the lab has set its established mean and SD
  (``hep2.control.positive_target``): the Westgard rules on this run's reading with the
  lot's runs before it (``westgard_check``, ``control_trend.py``). A rejection (1-3s, 2-2s,
  4-1s, 10x) fails the control; a reading beyond 2 SD alone (1-2s) passes with a
  warning in its reasons.

A well that cannot be scored (no field scored, wrong stain, ...) fails with its reason:
a control that was not read validates nothing. Pure: it reads the fields' results (and,
for the rules, the stored readings the caller gives) only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from appliance.assays.hep2.control_trend import REJECT_RULES, ControlReading, judge_reading
from appliance.assays.hep2.patterns import NAMES, canonical, pattern
from appliance.assays.hep2.specimen import look_alikes, too_coarse_for_subtypes
from appliance.assays.hep2.types import Hep2Result
from appliance.assays.hep2.well import Hep2WellResult, call_well
from appliance.config import Hep2Config

NEGATIVE = "negative"


def control_expectation(text: str) -> str:
    """The class a control must read as, from a class name, an alias or an ICAP code
    ("negative", "AC-0", "homogeneous", "AC-1", ...); ValueError naming the known ones."""
    try:
        return canonical(text)
    except ValueError:
        raise ValueError(f"HEp-2 control {text!r} is neither 'negative' nor a pattern's class "
                         f"name or ICAP code ({', '.join(NAMES)}; AC-0..AC-22)") from None


def describe(name: str) -> str:
    """``AC-1 homogeneous`` for a class name."""
    p = pattern(name)
    return f"{p.icap} {p.label}"


@dataclass(frozen=True)
class Hep2ControlCheck:
    """The decision on one control well."""

    expected: str  # class name ("negative" for the negative control)
    valid: bool
    reasons: tuple[str, ...]
    well: Hep2WellResult | None  # None when no field was shown
    # The Westgard judgement on the lab's target ({"target": [mean, SD], "z", "rules"});
    # None where it was not made (no target set, another control, a failed check).
    westgard: dict[str, Any] | None = None
    kit_lot: str = ""  # hep2.control.kit_lot when the check was made ("": not recorded)

    def to_dict(self) -> dict[str, Any]:
        """The stored / reported form (the well as its call in short)."""
        w = self.well
        return {
            "expected": self.expected, "expected_icap": pattern(self.expected).icap,
            "valid": self.valid, "reasons": list(self.reasons),
            "fields": len(w.fields) if w else 0,
            "fields_refused": len(w.fields_refused) if w else 0,
            "status": w.status if w else "not_scorable",
            "positive": w.positive if w else None,
            "intensity": (None if w is None or w.intensity_level is None else
                          {"level": w.intensity_level, "value": round(w.intensity_units or 0.0, 2),
                           "calibrated": w.intensity_calibrated}),
            "patterns": [p.icap for p in w.patterns] if w else [],
            "cells_interphase": w.cells_interphase if w else 0,
            **({} if self.westgard is None else {"westgard": self.westgard}),
            **({"kit_lot": self.kit_lot} if self.kit_lot else {}),
        }


def evaluate_control(results: Sequence[Hep2Result], expected: str, cfg: Hep2Config
                     ) -> Hep2ControlCheck:
    """Pool the control's fields (returns to one field already left out by the caller) and
    check the call against ``expected`` (a class name: see :func:`control_expectation`)."""
    expected = control_expectation(expected)
    lot = cfg.control.kit_lot
    if not results:
        return Hep2ControlCheck(expected, False, ("no control field was shown",), None,
                                kit_lot=lot)
    try:
        well = call_well(results, cfg)
    except ValueError as exc:  # fields of two models
        return Hep2ControlCheck(expected, False, (f"the control's fields do not pool: {exc}",),
                                None, kit_lot=lot)
    return Hep2ControlCheck(expected, *_verdict(well, expected, cfg), well, kit_lot=lot)


def _verdict(well: Hep2WellResult, expected: str, cfg: Hep2Config
             ) -> tuple[bool, tuple[str, ...]]:
    if not well.scored:
        return False, (f"the control could not be read: {well.reason}",)
    first = well.patterns[0].name if well.patterns else None
    if expected == NEGATIVE:
        if well.positive:
            what = describe(first) if first else "no pattern"
            return False, (f"the negative control reads positive ({what}, "
                           f"{well.intensity_level}, {well.intensity_units:.0f} units): the "
                           "run's background is too high or the box's cut-off does not fit "
                           "this microscope",)
        return True, (f"negative as expected ({well.intensity_units:.0f} units)",)
    if not well.positive or first is None:
        return False, (f"the positive control reads negative ({well.intensity_units:.0f} "
                       f"units), {describe(expected)} expected: the run or the lamp is too "
                       "weak",)
    if first == expected:
        return _intensity_verdict(well, expected, cfg)
    coarse = too_coarse_for_subtypes(well.um_per_px, cfg.specimen)
    why = f"reads {describe(first)} first, {describe(expected)} expected"
    if look_alikes(first, expected, coarse=coarse):
        why += (": a look-alike subtype" + (", read at a 10x scale: check it at 20x or 40x"
                                            if coarse else ""))
    return False, (why,)


def _intensity_verdict(well: Hep2WellResult, expected: str, cfg: Hep2Config
                       ) -> tuple[bool, tuple[str, ...]]:
    """The pattern is right; the kit's positive control must also read in the lab's range."""
    said = f"{describe(expected)} as expected, {well.intensity_level}"
    limits = cfg.control.positive_units
    if not limits or expected != control_expectation(cfg.control.default_expected):
        return True, (said,)
    low, high = limits
    units = well.intensity_units or 0.0
    if not well.intensity_calibrated:
        return False, (f"{said}, but its {units:.0f} units are not calibrated: the lab's "
                       f"range {low:g}-{high:g} (hep2.control.positive_units) is in calibrated "
                       "units (calibrate the microscope: appliance calibrate-iif)",)
    if not low <= units <= high:
        return False, (f"{said}, but {units:.0f} units is outside the lab's range "
                       f"{low:g}-{high:g} (hep2.control.positive_units): the lamp, the "
                       "exposure or the kit has drifted",)
    return True, (f"{said}, {units:.0f} units within the lab's range {low:g}-{high:g}",)


def westgard_check(check: Hep2ControlCheck, history: Sequence[ControlReading], *,
                   case_id: str, at: str, cfg: Hep2Config) -> Hep2ControlCheck:
    """``check`` judged also on the lab's target (``hep2.control.positive_target``) with
    the Westgard rules, ``history`` being the stored readings of that control since the
    lot began (those of another ``kit_lot`` are left out where the check names its lot).
    Only a passed check of the kit's positive control is judged; others come back as
    they are."""
    target = cfg.control.positive_target
    w = check.well
    if (not target or not check.valid or w is None
            or check.expected != control_expectation(cfg.control.default_expected)):
        return check
    mean, sd = target
    if not w.intensity_calibrated or w.intensity_units is None:
        return replace(check, valid=False, reasons=(
            *check.reasons, "its units are not calibrated: the lab's target "
            f"{mean:g} +/- {sd:g} (hep2.control.positive_target) is in calibrated units "
            "(calibrate the microscope: appliance calibrate-iif)"))
    units = w.intensity_units
    if check.kit_lot:  # another lot's runs read on another level
        history = [r for r in history if r.kit_lot == check.kit_lot]
    point = judge_reading(history, ControlReading(
        decided_at=at, case_id=case_id, expected=check.expected, valid=True, units=units,
        calibrated=True, kit_lot=check.kit_lot), (mean, sd))
    z = point.z if point.z is not None else 0.0
    check = replace(check, westgard={"target": [mean, sd], "z": round(z, 2),
                                     "rules": list(point.rules)})
    said = (f"{units:.0f} units, {z:+.1f} SD from the lab's target {mean:g} (SD {sd:g}, "
            "hep2.control.positive_target)")
    broken = [r for r in point.rules if r in REJECT_RULES]
    if broken:
        rules = f"rule{'s' if len(broken) > 1 else ''} {', '.join(broken)}"
        return replace(check, valid=False, reasons=(
            *check.reasons, f"{said}: rejected by the Westgard {rules}; correct the run "
            "(lamp, exposure, kit) and repeat the control (appliance case controls shows the "
            "chart)"))
    if point.rules:  # 1-2s: a warning
        return replace(check, reasons=(
            *check.reasons, f"{said}: beyond 2 SD, a Westgard warning (1-2s): look at the "
                            "runs before it (appliance case controls)"))
    return replace(check, reasons=(*check.reasons, said))
