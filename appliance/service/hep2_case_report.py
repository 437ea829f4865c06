"""From a HEp-2 case's summary to its report document (`appliance report CASE_ID`)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.assays.hep2.control import describe
from appliance.outputs.casebook import CaseFieldRow
from appliance.outputs.report.hep2_html import write_hep2_report
from appliance.outputs.report.model import (
    Hep2CaseReportData,
    Hep2ReportCheck,
    Hep2ReportField,
    Hep2ReportPattern,
)
from appliance.service.case_report import models_and_research_line
from appliance.service.hep2_case_summary import Hep2CaseSummary, call_in_words


def _field_call(result: Mapping[str, Any]) -> str:
    return call_in_words(bool(result.get("positive")) if result.get("status") == "scored"
                         else None, [str(p.get("icap")) for p in result.get("patterns") or ()])


def _field(summary: Hep2CaseSummary, f: CaseFieldRow, note: str) -> Hep2ReportField:
    r = f.result
    intensity = r.get("intensity") or {}
    source = str(r.get("file", ""))
    return Hep2ReportField(
        index=f.number, role="patient" if f.role == "tumour" else "control",
        created_at=str(r.get("created_at") or f.added_at),
        source=f"1:{f.dilution} well, {source}" if f.dilution is not None else source,
        status="scored" if r.get("status") == "scored" else "not_scorable",
        call=_field_call(r),
        intensity=(f"{intensity['level']} {float(intensity['value']):.0f}" if intensity
                   else ""),
        cells=int((r.get("cell_counts") or {}).get("interphase", 0)),
        counted=f.number in summary.counted, note=note, thumbnail_jpeg=f.thumbnail)


def hep2_report_data(summary: Hep2CaseSummary, *, device_id: str, config_sha256: str,
                     now: datetime | None = None) -> Hep2CaseReportData:
    """The report's content for one HEp-2 case summary."""
    doc = summary.to_dict()
    case, w = summary.case, summary.well
    models, research = models_and_research_line(f.result for f in summary.fields)
    notes = {f["number"]: f["note"] for f in doc["fields"]}
    units = "units" if w is not None and w.intensity_calibrated else "relative units"
    return Hep2CaseReportData(
        case_id=case.case_id, opened_at=case.opened_at, closed_at=case.closed_at,
        device_id=device_id, software_version=__version__, config_sha256=config_sha256,
        models=models, positive=w.positive if w is not None and w.scored else None,
        patterns=tuple(Hep2ReportPattern(p.icap, p.label, p.share, p.evidence)
                       for p in (w.patterns if w is not None else ())),
        intensity=("" if w is None or w.intensity_level is None else
                   f"{w.intensity_level}: {w.intensity_units or 0.0:.0f} {units}"),
        cells=(f"{w.cells_interphase} interphase and {w.cells_mitotic} mitotic cells"
               if w is not None else "no cells"),
        fields_counted=doc["fields_counted"], fields_total=doc["fields_total"],
        reason=doc["reason"], control_status=summary.control_status,
        checks=tuple(Hep2ReportCheck(
            round=c.round, expected=describe(c.expected), valid=c.valid,
            reasons=(*(str(x) for x in c.check.get("reasons", ())),
                     *((f"kit lot {c.check['kit_lot']}",) if c.check.get("kit_lot") else ())),
            decided_at=c.decided_at,
            case_id="" if c.case_id in ("", summary.case.case_id) else c.case_id)
            for c in summary.checks),
        slide=summary.case.slide,
        warnings=summary.warnings,
        fields=tuple(_field(summary, f, notes[f.number]) for f in summary.fields),
        research_use=research,
        generated_at=(now or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
        titres=tuple(f"{describe(t.name)}: {t.words()} ({t.why})" for t in summary.titres),
        wells=tuple(f"1:{w['dilution']} well: " + _well_words(w) for w in doc["wells"]))


def _well_words(well: Mapping[str, Any]) -> str:
    """One dilution's well in words (its summary row)."""
    read = call_in_words(well["positive"], well["patterns"])
    intensity = well["intensity"]
    level = f", {intensity['level']} {intensity['value']:.0f}" if intensity else ""
    n = well["fields_counted"]
    return f"{read}{level} ({n} field{'' if n == 1 else 's'})"


def write_hep2_case_report(summary: Hep2CaseSummary, out_dir: Path, *, device_id: str,
                           config_sha256: str) -> list[Path]:
    """Write ``case-<id>.pdf`` and ``.html`` into ``out_dir``; the paths written."""
    data = hep2_report_data(summary, device_id=device_id, config_sha256=config_sha256)
    return write_hep2_report(data, out_dir, f"case-{summary.case.case_id}")
