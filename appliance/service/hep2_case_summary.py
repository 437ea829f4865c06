"""A HEp-2 case's state from its stored rows: the patient well's call and the kit controls.

A HEp-2 case is one patient's well, read in several fields. Its fields (role ``tumour``
in the store, the patient's) are pooled as ``appliance score --assay hep2 --well`` pools
them (``well.call_well``), once each: a return to a field already shown (the case's
fingerprint match) is kept but not counted again, or its cells would vote twice. The
kit's controls are checked in control rounds (``assays.hep2.control``).

Pure over what :mod:`appliance.outputs.casebook` reads, so the service, the CLI and the
MQTT ``case`` message say the same thing about a case, after a restart too: the fields
are rebuilt from their stored JSON, cells included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from appliance.assays.hep2.control import NEGATIVE
from appliance.assays.hep2.types import Hep2Result
from appliance.assays.hep2.well import Hep2WellResult, call_well
from appliance.config import Hep2Config
from appliance.outputs import hep2_json
from appliance.outputs.casebook import CaseFieldRow, CaseRow, CheckRow

NO_FIELD = "no field of the patient's well has been shown"


def hep2_control_state(checks: Sequence[CheckRow]) -> str:
    """The kit controls' state: the latest decision on each expected reading counts (a
    failed control may be repeated). ``failed`` when any counted one failed, ``valid``
    when a negative and a positive (pattern) control both passed, ``incomplete`` when
    only one kind was checked, ``not_checked`` when none was."""
    if not checks:
        return "not_checked"
    latest = {c.expected: c for c in checks}
    if not all(c.valid for c in latest.values()):
        return "failed"
    kinds = {c.expected == NEGATIVE for c in latest.values()}
    return "valid" if kinds == {True, False} else "incomplete"


@dataclass(frozen=True)
class Hep2CaseSummary:
    """Everything the box says about a HEp-2 case."""

    case: CaseRow
    well: Hep2WellResult | None  # None: no patient field yet, or they do not pool
    control_status: str  # valid | incomplete | failed | not_checked
    checks: tuple[CheckRow, ...]
    fields: tuple[CaseFieldRow, ...]  # patient and control, in order
    counted: frozenset[int]  # numbers of the patient fields pooled into the well
    warnings: tuple[str, ...]  # the case's, then the well's
    reason: str = NO_FIELD  # why there is no well (when ``well`` is None)

    @property
    def call(self) -> str:
        """The call in a few words, for the panel and the CLI."""
        w = self.well
        if w is None or not w.scored:
            return "not scorable"
        if not w.positive:
            return f"negative ({w.intensity_units:.0f} units)"
        names = " + ".join(p.icap for p in w.patterns)
        return f"positive {names}, {w.intensity_level}"

    def to_dict(self) -> dict[str, Any]:
        """The ``case`` message / stored summary (docs/cases.md, "HEp-2 cases")."""
        c = self.case
        w = hep2_json.well_to_dict(self.well) if self.well is not None else None
        patient = [f for f in self.fields if f.role == "tumour"]
        return {
            "case_id": c.case_id, "assay": "hep2", "opened_at": c.opened_at,
            "closed_at": c.closed_at, "opened_by": c.opened_by, "closed_by": c.closed_by,
            "status": w["status"] if w else "not_scorable",
            "positive": w["positive"] if w else None,
            "intensity": w["intensity"] if w else None,
            "patterns": w["patterns"] if w else [],
            "cell_counts": (w["cell_counts"] if w else
                            {"total": 0, "interphase": 0, "mitotic": 0}),
            "reason": (w["reason"] if w else self.reason),
            "reason_code": (w["reason_code"] if w else "no_field"),
            "um_per_px": w["um_per_px"] if w else None,
            "fields_counted": len(self.counted), "fields_total": len(patient),
            "control": {"status": self.control_status,
                        "checks": [dict(ch.check, decided_at=ch.decided_at, round=ch.round)
                                   for ch in self.checks]},
            "warnings": list(self.warnings),
            "models": [{"name": n, "sha256": h} for n, h in sorted(
                {(f.result["model"]["name"], f.result["model"]["sha256"])
                 for f in self.fields if "model" in f.result})],
            "fields": [self._field(f) for f in self.fields],
        }

    def _field(self, f: CaseFieldRow) -> dict[str, Any]:
        r = f.result
        intensity = r.get("intensity") or {}
        if f.role == "control":
            note = f"control round {f.control_round}"
        elif f.duplicate_of is not None:
            note = f"return to field {f.duplicate_of}: counted once"
        elif f.number not in self.counted:
            note = "not counted: " + (r.get("reason") or "not a HEp-2 field result")
        else:
            note = ""
        return {"number": f.number, "role": "patient" if f.role == "tumour" else "control",
                "file": r.get("file"), "status": r.get("status"),
                "positive": r.get("positive"), "intensity_level": intensity.get("level"),
                "patterns": [p.get("icap") for p in r.get("patterns") or ()],
                "counted": f.number in self.counted, "duplicate_of": f.duplicate_of,
                "note": note}


def distinct_results(fields: Sequence[CaseFieldRow]) -> tuple[list[tuple[int, Hep2Result]],
                                                               list[str]]:
    """(number, result) of each field that is not a return to an earlier one, rebuilt
    from the store; and a warning for each stored result that cannot be read back."""
    out, warnings = [], []
    for f in fields:
        if f.duplicate_of is not None:
            continue
        try:
            out.append((f.number, hep2_json.result_from_dict(f.result)))
        except (KeyError, TypeError, ValueError) as exc:
            warnings.append(f"field {f.number} is left out: its stored result is not a HEp-2 "
                            f"field result ({exc})")
    return out, warnings


def summarise_hep2(case: CaseRow, fields: Sequence[CaseFieldRow], checks: Sequence[CheckRow],
                   cfg: Hep2Config) -> Hep2CaseSummary:
    """Pool the case's patient fields into the well's call and collect the flags."""
    patient = [f for f in fields if f.role == "tumour"]
    results, warnings = distinct_results(patient)
    well, reason = None, NO_FIELD
    if results:
        try:
            well = call_well([r for _, r in results], cfg)
        except ValueError as exc:  # fields of two models
            reason = f"the well's fields do not pool: {exc}"
            warnings.append(reason)
    # The fields call_well pools: the scored ones (by number: a camera's fields may share
    # a source name).
    counted = frozenset(n for n, r in results
                        if well is not None and r.scored and r.intensity_units is not None)
    status = hep2_control_state(checks)
    warnings = _control_warnings(status, checks) + warnings
    if case.mode == "control":
        warnings.append(f"a kit control check ({case.control_expected}) is still in progress")
    repeats = sum(f.duplicate_of is not None for f in patient)
    if repeats:
        warnings.append(f"{repeats} field(s) were returns to a field already shown: "
                        "counted once")
    if well is not None:
        warnings += well.warnings
    return Hep2CaseSummary(case, well, status, tuple(checks), tuple(fields), counted,
                           tuple(dict.fromkeys(warnings)), reason)


def _control_warnings(status: str, checks: Sequence[CheckRow]) -> list[str]:
    if status == "not_checked":
        return ["kit controls not checked: the call is not validated by a control"]
    if status == "failed":
        return ["kit control FAILED: the call is not valid for diagnosis; repeat the run"]
    kinds = {c.expected == NEGATIVE for c in checks}
    missing = [k for k, neg in (("negative", True), ("positive", False)) if neg not in kinds]
    return [f"the kit's {k} control was not checked: the call is not validated by it"
            for k in missing]
