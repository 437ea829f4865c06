"""From a case's summary to the report document (`appliance report CASE_ID`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.assays.her2.types import MembraneClass, ModelRef
from appliance.outputs.casebook import CheckRow
from appliance.outputs.report.html import write_report
from appliance.outputs.report.model import (
    CaseReportData,
    ReportControl,
    ReportField,
    ReportModel,
)
from appliance.outputs.result_json import is_research_use_only
from appliance.service.case_summary import CaseSummary

_COMPLETE = (MembraneClass.COMPLETE_INTENSE.value, MembraneClass.COMPLETE_WEAK_MODERATE.value)


def _control(summary: CaseSummary) -> ReportControl:
    latest: CheckRow | None = summary.checks[-1] if summary.checks else None
    check: Mapping[str, Any] = latest.check if latest else {}
    reasons: list[str] = list(check.get("reasons", ()))
    if len(summary.checks) > 1:
        reasons.append(f"{len(summary.checks)} control checks in this case; the latest is shown")
    return ReportControl(
        status=summary.control_status, expected=check.get("expected"),
        measured_score=check.get("measured_score"), measured_od=check.get("measured_od"),
        reference_od=check.get("reference_od"), ratio=check.get("ratio"),
        cells=int(check.get("cells", 0)), fields=int(check.get("fields", 0)),
        reasons=tuple(reasons), calibration=summary.calibration.describe(),
    )


def _field(summary: CaseSummary, number: int, result: Mapping[str, Any], role: str,
           added_at: str, thumbnail: bytes | None) -> ReportField:
    verdict = next((v for v in summary.score.fields if v.number == number), None)
    percent = result.get("percent") or {}
    complete = sum(percent.get(k, 0.0) for k in _COMPLETE)
    stained = 100.0 - percent.get(MembraneClass.NONE.value, 100.0) if percent else 0.0
    if role == "control":
        note = "control field"
        score = result.get("score")
    else:
        note = verdict.note if verdict else ""
        score = verdict.score.value if verdict and verdict.score else None
    if result.get("status") != "scored":
        note = str(result.get("reason") or "not scorable")
    return ReportField(
        index=number, role=role, created_at=str(result.get("created_at") or added_at),
        source=str(result.get("file", "")), status=str(result.get("status")),
        score=score, category=result.get("category") if role == "control" else None,
        tumour_cells=int(result.get("tumour_cells", 0)),
        percent_complete_intense=float(percent.get(MembraneClass.COMPLETE_INTENSE.value, 0.0)),
        percent_complete=complete, percent_stained=max(0.0, stained),
        counted=bool(verdict and verdict.counted) and role == "tumour",
        note=note, thumbnail_jpeg=thumbnail,
    )


def models_and_research_line(results: Iterable[Mapping[str, Any]]
                             ) -> tuple[tuple[ReportModel, ...], str]:
    """The models that scored the stored ``results``, and the report's foot line: what
    each was validated on, led by RESEARCH USE ONLY when one is validated on generated
    data only."""
    models: dict[str, ReportModel] = {}
    for result in results:
        m = result.get("model")
        if m:
            models[m["sha256"]] = ReportModel(m["name"], m["precision"], m["sha256"],
                                              m["validated_on"])
    research = [f"Model {m.name} ({m.precision}) validated on: {m.validated_on}."
                for m in models.values()]
    if any(is_research_use_only(ModelRef(m.name, m.sha256, m.precision, m.validated_on))
           for m in models.values()):
        research.insert(0, "RESEARCH USE ONLY - not for diagnosis.")
    return tuple(models.values()), " ".join(research) or "No field was scored."


def report_data(summary: CaseSummary, *, device_id: str, config_sha256: str,
                now: datetime | None = None) -> CaseReportData:
    """The report's content for one case summary."""
    s, case = summary.score, summary.case
    models, research = models_and_research_line(f.result for f in summary.fields)
    return CaseReportData(
        case_id=case.case_id, opened_at=case.opened_at, closed_at=case.closed_at,
        device_id=device_id, software_version=__version__, config_sha256=config_sha256,
        models=models,
        score=s.score.value if s.score else None,
        category=s.category.value if s.category else None, rule=s.rule,
        fields_counted=s.fields_counted, fields_total=s.fields_total,
        tumour_cells=s.tumour_cells, percent={k.value: v for k, v in s.percent.items()},
        control=_control(summary), heterogeneity=s.heterogeneity, borderline=s.borderline,
        warnings=summary.warnings,
        fields=tuple(_field(summary, f.number, f.result, f.role, f.added_at, f.thumbnail)
                     for f in summary.fields),
        research_use=research,
        generated_at=(now or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
    )


def write_case_report(summary: CaseSummary, out_dir: Path, *, device_id: str,
                      config_sha256: str) -> list[Path]:
    """Write ``case-<id>.pdf`` and ``.html`` into ``out_dir``; the paths written."""
    data = report_data(summary, device_id=device_id, config_sha256=config_sha256)
    return write_report(data, out_dir, f"case-{summary.case.case_id}")
