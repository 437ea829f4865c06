"""A HEp-2 case's state from its stored rows: the patient well's call and the kit controls.

A HEp-2 case is one patient's well, read in several fields. Its fields (role ``tumour``
in the store, the patient's) are pooled as ``appliance score --assay hep2 --well`` pools
them (``well.call_well``), once each: a return to a field already shown (the case's
fingerprint match) is kept but not counted again, or its cells would vote twice. The
kit's controls are checked in control rounds (``assays.hep2.control``), in the case or, for
a case on a named slide, in any case on that slide (the caller passes those checks too).

Pure over what :mod:`appliance.outputs.casebook` reads, so the service, the CLI and the
MQTT ``case`` message say the same thing about a case, after a restart too: the fields
are rebuilt from their stored JSON, cells included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from appliance.assays.case_views import standing_rows, superseded_by
from appliance.assays.hep2.control import NEGATIVE
from appliance.assays.hep2.titre import Titre, endpoint_titres
from appliance.assays.hep2.types import Hep2Result
from appliance.assays.hep2.well import Hep2WellResult, call_well
from appliance.config import Hep2Config
from appliance.outputs import hep2_json
from appliance.outputs.casebook import CaseFieldRow, CaseRow, CheckRow
from appliance.service.case_summary import case_models, superseded_warning

NO_FIELD = "no field of the patient's well has been shown"


def call_in_words(positive: bool | None, icaps: Sequence[str]) -> str:
    """A call in words: "not scorable" (None), "negative", or "positive AC-1 + AC-15"
    (``icaps`` may carry their titres)."""
    if positive is None:
        return "not scorable"
    return "positive " + " + ".join(icaps) if positive else "negative"


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
    # A titration (dilutions given): each dilution's well, lowest (the screening well,
    # ``well``) first, and each screening pattern's endpoint titre.
    wells: tuple[DilutionWell, ...] = ()
    titres: tuple[Titre, ...] = ()

    @property
    def call(self) -> str:
        """The call in a few words, for the panel and the CLI."""
        w = self.well
        if w is None or not w.scored:
            return "not scorable"
        at = f" at 1:{self.wells[0].dilution}" if self.wells else ""
        if not w.positive:
            return f"negative{at} ({w.intensity_units:.0f} units)"
        titre = {t.name: f" {t.words()}" for t in self.titres}
        called = call_in_words(True, [p.icap + titre.get(p.name, "") for p in w.patterns])
        return f"{called}, {w.intensity_level}{at if not self.titres else ''}"

    def to_dict(self) -> dict[str, Any]:
        """The ``case`` message / stored summary (docs/cases.md, "HEp-2 cases")."""
        replaced = superseded_by((f.number, f.result) for f in self.fields)
        c = self.case
        w = hep2_json.well_to_dict(self.well) if self.well is not None else None
        patient = [f for f in self.fields if f.role == "tumour"]
        return {
            "case_id": c.case_id, "assay": "hep2", "slide": c.slide, "opened_at": c.opened_at,
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
            "screening_dilution": self.wells[0].dilution if self.wells else None,
            "titres": [{"name": t.name, "icap": t.icap, "titre": t.words(),
                        "dilution": t.dilution, "endpoint": t.endpoint, "why": t.why}
                       for t in self.titres],
            "wells": [_well_row(w) for w in self.wells],
            "fields_counted": len(self.counted), "fields_total": len(patient),
            "control": {"status": self.control_status,
                        "checks": [dict(ch.check, decided_at=ch.decided_at, round=ch.round,
                                        case_id=ch.case_id or c.case_id)
                                   for ch in self.checks]},
            "warnings": list(self.warnings),
            "models": case_models(self.fields),
            "fields": [self._field(f, replaced) for f in self.fields],
        }

    def _field(self, f: CaseFieldRow, replaced: dict[int, int]) -> dict[str, Any]:
        r = f.result
        intensity = r.get("intensity") or {}
        if f.role == "control":
            note = f"control round {f.control_round}"
        elif f.number in replaced:
            note = f"superseded by field {replaced[f.number]} (read again): not counted"
        elif f.number in self.counted:
            note = ""
        elif f.duplicate_of is not None:
            note = f"return to field {f.duplicate_of}: counted once"
        elif f.number not in self.counted:
            if self.wells and f.dilution is None:
                why = "shown before a dilution was given"
            elif r.get("status") == "not_scorable":
                why = str(r.get("reason") or "not scorable")
            elif r.get("status") == "scored":
                why = "its well's fields do not pool, or its stored result is unreadable"
            else:
                why = "its stored result is unreadable"
            note = f"not counted: {why}"
        else:
            note = ""
        return {"number": f.number, "role": "patient" if f.role == "tumour" else "control",
                "file": r.get("file"), "status": r.get("status"),
                "positive": r.get("positive"), "intensity_level": intensity.get("level"),
                "patterns": [p.get("icap") for p in r.get("patterns") or ()],
                "counted": f.number in self.counted, "duplicate_of": f.duplicate_of,
                "dilution": f.dilution, "note": note}


def _well_row(w: DilutionWell) -> dict[str, Any]:
    """One dilution's well in the summary."""
    call = w.well
    return {"dilution": w.dilution,
            "status": call.status if call is not None else "not_scorable",
            "positive": call.positive if call is not None and call.scored else None,
            "patterns": [p.icap for p in call.patterns] if call is not None else [],
            "intensity": (None if call is None or call.intensity_level is None else
                          {"level": call.intensity_level,
                           "value": round(call.intensity_units or 0.0, 2),
                           "calibrated": call.intensity_calibrated}),
            "fields_counted": len(w.counted)}


def distinct_results(fields: Sequence[CaseFieldRow]) -> tuple[list[tuple[int, Hep2Result]],
                                                               list[str]]:
    """(number, result) of the view that stands for each field
    (:func:`appliance.assays.case_views.standing_views`: returns counted once, a scored
    return standing for a refused first view, a superseded report never), rebuilt from the
    store; and a warning for each stored result that cannot be read back."""
    standing = standing_rows((f.number, f.duplicate_of, f.result) for f in fields)
    out, warnings = [], []
    for f in fields:
        if f.number not in standing:
            continue
        try:
            out.append((f.number, hep2_json.result_from_dict(f.result)))
        except (KeyError, TypeError, ValueError) as exc:
            warnings.append(f"field {f.number} is left out: its stored result is not a HEp-2 "
                            f"field result ({exc})")
    return out, warnings


@dataclass(frozen=True)
class DilutionWell:
    """One dilution's well of a titration: its pooled call (None: its fields do not
    pool) and the fields pooled into it."""

    dilution: int
    well: Hep2WellResult | None
    counted: frozenset[int]


def _pool(results: Sequence[tuple[int, Hep2Result]], cfg: Hep2Config
          ) -> tuple[Hep2WellResult | None, frozenset[int], str | None]:
    """(the call, the numbers of the fields pooled, why there is no call)."""
    if not results:
        return None, frozenset(), NO_FIELD
    try:
        well = call_well([r for _, r in results], cfg)
    except ValueError as exc:  # fields of two models
        return None, frozenset(), f"the well's fields do not pool: {exc}"
    # The fields call_well pools: the scored ones (by number: a camera's fields may share
    # a source name).
    return well, frozenset(n for n, r in results
                           if r.scored and r.intensity_units is not None), None


def summarise_hep2(case: CaseRow, fields: Sequence[CaseFieldRow], checks: Sequence[CheckRow],
                   cfg: Hep2Config) -> Hep2CaseSummary:
    """Pool the case's patient fields into the well's call (the screening well's, in a
    titration, with each pattern's endpoint titre) and collect the flags."""
    patient = [f for f in fields if f.role == "tumour"]
    results, warnings = distinct_results(patient)
    dilution_of = {f.number: f.dilution for f in patient}
    dilutions = sorted({d for n, _ in results if (d := dilution_of[n]) is not None})
    wells: list[DilutionWell] = []
    if dilutions:
        undiluted = [n for n, _ in results if dilution_of[n] is None]
        if undiluted:
            warnings.append(f"{len(undiluted)} patient field(s) were shown before a dilution "
                            "was given: left out of the call and the titre")
        for d in dilutions:
            well_d, counted_d, why = _pool([(n, r) for n, r in results if dilution_of[n] == d],
                                           cfg)
            if why is not None:
                warnings.append(f"1:{d} well: {why}")
            wells.append(DilutionWell(d, well_d, counted_d))
        well = wells[0].well
        reason = (NO_FIELD if well is not None else
                  f"the screening well (1:{dilutions[0]}) does not pool")
        counted = frozenset().union(*(w.counted for w in wells))
        series: list[tuple[int, Hep2WellResult]] = []
        for w in wells:
            if w.well is None:
                break  # its fields do not pool: the series read ends here (warned above)
            series.append((w.dilution, w.well))
        titres = endpoint_titres(series, cfg.specimen)
        warnings += [f"{t.icap} titre {t.words()}: {t.why}" for t in titres if not t.endpoint]
    else:
        well, counted, why = _pool(results, cfg)
        reason = why or NO_FIELD
        if why is not None and results:
            warnings.append(why)
        titres = ()
    status = hep2_control_state(checks)
    warnings = _control_warnings(status, checks, case) + warnings
    if case.mode == "control":
        warnings.append(f"a kit control check ({case.control_expected}) is still in progress")
    repeats = sum(f.duplicate_of is not None for f in patient)
    if repeats:
        warnings.append(f"{repeats} field(s) were returns to a field already shown: "
                        "counted once")
    warnings += superseded_warning(fields, superseded_by((f.number, f.result) for f in fields))
    if well is not None:
        warnings += well.warnings
    return Hep2CaseSummary(case, well, status, tuple(checks), tuple(fields), counted,
                           tuple(dict.fromkeys(warnings)), reason, tuple(wells), titres)


def _control_warnings(status: str, checks: Sequence[CheckRow], case: CaseRow) -> list[str]:
    where = " on this slide" if case.slide is not None else ""
    latest = {c.expected: c for c in checks}  # the latest decision on each counts
    if status == "not_checked":
        return [f"kit controls not checked{where}: the call is not validated by a control"]
    if status == "failed":
        elsewhere = sorted({c.case_id for c in latest.values()
                            if not c.valid and c.case_id and c.case_id != case.case_id})
        seen = f" (in case {', '.join(elsewhere)} on this slide)" if elsewhere else ""
        return [f"kit control FAILED{seen}: the call is not valid for diagnosis; repeat the "
                "run"]
    kinds = {c.expected == NEGATIVE for c in checks}
    missing = [k for k, neg in (("negative", True), ("positive", False)) if neg not in kinds]
    warned = [(c.check.get("westgard") or {}) for c in latest.values() if c.valid]
    return [f"the kit's {k} control was not checked{where}: the call is not validated by it"
            for k in missing] + [
        f"the kit's positive control read {w['z']:+.1f} SD from the lab's target: a "
        "Westgard warning (1-2s), look at the runs before it (appliance case controls)"
        for w in warned if "1-2s" in w.get("rules", ())]
