"""A case's state from its stored rows: control status, calibration, pooled score, flags.

Pure over what :mod:`appliance.outputs.casebook` reads, so the service, the CLI and
the report all say the same thing about a case.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.assays.case_views import superseded_by
from appliance.assays.her2.case_score import CaseField, CaseScore, score_case
from appliance.assays.her2.control import Calibration, CellReading, nominal
from appliance.config import ControlConfig, Her2Config, MeasureConfig
from appliance.outputs.casebook import CaseFieldRow, CaseRow, CheckRow

# Order of preference for the control that calibrates: the strongest.
_CALIBRATE_FROM = ("3+", "2+")


def readings(result: Mapping[str, Any]) -> tuple[CellReading, ...]:
    """The membrane numbers of a stored result's tumour cells."""
    return tuple(CellReading(float(c["intensity_od"]), float(c["completeness"]))
                 for c in result.get("cells") or ())


def control_state(checks: Sequence[CheckRow], measure: MeasureConfig,
                  control: ControlConfig) -> tuple[str, Calibration]:
    """The case's control status and the thresholds it measures with.

    The latest decision per expected level counts (a failed control may be repeated).
    Any failed level fails the case's control; calibration comes from the latest valid
    3+ (else 2+) check that calibrated, when calibration is on.
    """
    if not checks:
        return "not_checked", nominal(measure)
    latest: dict[str, CheckRow] = {}
    for c in checks:
        latest[c.expected] = c
    if not all(c.valid for c in latest.values()):
        return "failed", nominal(measure)
    if control.calibration:
        for level in _CALIBRATE_FROM:
            check = latest.get(level)
            cal = check.check.get("calibration", {}) if check else {}
            if cal.get("source") == "control":
                t = cal["thresholds"]
                return "valid", Calibration(float(cal["factor"]), (t[0], t[1], t[2]), "control")
    return "valid", nominal(measure)


@dataclass(frozen=True)
class CaseSummary:
    """Everything the box says about a case."""

    case: CaseRow
    score: CaseScore
    control_status: str  # valid | failed | not_checked
    calibration: Calibration
    checks: tuple[CheckRow, ...]
    fields: tuple[CaseFieldRow, ...]  # tumour and control, in order
    warnings: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """The ``case`` message / stored summary (keys documented in docs/mqtt.md)."""
        s, c = self.score, self.case
        verdicts = {v.number: v for v in s.fields}
        fields = []
        for f in self.fields:
            v = verdicts.get(f.number)
            fields.append({
                "number": f.number, "role": f.role, "file": f.result.get("file"),
                "status": f.result.get("status"), "field_score": f.result.get("score"),
                "score": v.score.value if v and v.score else None,
                "tumour_cells": f.result.get("tumour_cells", 0),
                "counted": bool(v and v.counted), "duplicate_of": f.duplicate_of,
                "note": v.note if v else "",
            })
        tumour = [f for f in self.fields if f.role == "tumour"]
        return {
            "case_id": c.case_id, "opened_at": c.opened_at, "closed_at": c.closed_at,
            "opened_by": c.opened_by, "closed_by": c.closed_by,
            "score": s.score.value if s.score else None,
            "category": s.category.value if s.category else None, "rule": s.rule,
            "fields_counted": s.fields_counted, "fields_total": s.fields_total,
            "tumour_cells": s.tumour_cells,
            "percent": {k.value: round(v, 1) for k, v in s.percent.items()},
            "mean_od": None if s.mean_od is None else round(s.mean_od, 4),
            "control": {
                "status": self.control_status,
                "calibration": {"factor": round(self.calibration.factor, 4),
                                "source": self.calibration.source,
                                "thresholds": [round(t, 4) for t in
                                               self.calibration.thresholds]},
                "checks": [dict(ch.check, decided_at=ch.decided_at, round=ch.round)
                           for ch in self.checks],
            },
            "heterogeneity": list(s.heterogeneity), "borderline": list(s.borderline),
            "warnings": list(self.warnings),
            "scores": dict(Counter(f.result.get("score") or "not_scorable" for f in tumour)),
            "models": case_models(self.fields),
            "fields": fields,
        }


def case_models(fields: Sequence[CaseFieldRow]) -> list[dict[str, str]]:
    """Name and sha256 of every model that scored one of the case's fields, sorted."""
    return [{"name": n, "sha256": h} for n, h in sorted(
        {(f.result["model"]["name"], f.result["model"]["sha256"])
         for f in fields if "model" in f.result})]


def summarise(case: CaseRow, fields: Sequence[CaseFieldRow], checks: Sequence[CheckRow],
              cfg: Her2Config) -> CaseSummary:
    """Pool the case's tumour fields with its current calibration and collect the flags."""
    status, calibration = control_state(checks, cfg.measure, cfg.control)
    tumour = [f for f in fields if f.role == "tumour"]
    replaced = superseded_by((f.number, f.result) for f in fields)
    score = score_case(
        [CaseField(number=f.number, scored=f.result.get("status") == "scored",
                   cells=readings(f.result), duplicate_of=f.duplicate_of,
                   superseded_by=replaced.get(f.number)) for f in tumour],
        calibration.thresholds, measure=cfg.measure, rules=cfg.rules, case=cfg.case)
    warnings = []
    if status == "not_checked":
        warnings.append("positive control not checked: the score is not validated by a control")
    elif status == "failed":
        warnings.append("positive control FAILED: the score is not valid for diagnosis; "
                        "repeat the staining")
    if case.mode == "control":
        warnings.append(f"a {case.control_expected} control check is still in progress")
    warnings += superseded_warning(fields, replaced)
    stale = [f.number for f in tumour if f.result.get("thresholds") is not None
             and not _same(f.result["thresholds"], calibration.thresholds)]
    if stale:
        warnings.append(
            f"{len(stale)} tumour field(s) ({', '.join(map(str, stale[:10]))}) were measured "
            "with other thresholds than the case's final ones (before the control was "
            "checked): their cells are re-classified, but their membrane completeness was "
            "measured with the earlier faint threshold")
    return CaseSummary(case, score, status, calibration, tuple(checks), tuple(fields),
                       tuple(warnings))


def superseded_warning(fields: Sequence[CaseFieldRow], replaced: Mapping[int, int]
                       ) -> list[str]:
    """The case warnings naming fields read again under new settings, or reported again
    sharper (empty when none); ``replaced`` is
    :func:`appliance.assays.case_views.superseded_by` of ``fields``."""
    why = {f.number: (f.result.get("supersedes") or {}).get("reason") for f in fields}
    warnings = []
    for reason, what in (("settings_changed", "were read again after a settings change "
                                              "(objective, config)"),
                         ("sharper", "were reported again when the view came back sharper "
                                     "(focused better)")):
        pairs = [(old, new) for old, new in sorted(replaced.items()) if why.get(new) == reason]
        if pairs:
            named = ", ".join(f"{old} by {new}" for old, new in pairs[:10])
            warnings.append(f"{len(pairs)} field(s) {what}: only the new reading counts "
                            f"(field {named})")
    return warnings


def _same(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= 1e-3 for x, y in zip(a, b, strict=True))
