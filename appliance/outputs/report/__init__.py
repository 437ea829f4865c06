"""The HER2 case report: data model, PDF and HTML renderers, and writing both files."""

from appliance.outputs.report.html import render_html, write_report
from appliance.outputs.report.layout import render_pdf
from appliance.outputs.report.model import (
    CaseReportData,
    ReportControl,
    ReportField,
    ReportModel,
)

__all__ = [
    "CaseReportData",
    "ReportControl",
    "ReportField",
    "ReportModel",
    "render_html",
    "render_pdf",
    "write_report",
]
