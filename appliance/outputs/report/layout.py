"""Lay out the HER2 case report on A4 pages and render it with the minimal PDF writer.

Page 1 carries the header, the case-score and control boxes, the flags, the models and
the start of the per-field table; when the table does not fit it continues on further
pages under a short header. Every page has the research-use line and "page i of n" at
the foot. Text is measured with the Helvetica metrics and wrapped, never clipped
silently: what does not fit is cut with "..." and counted ("+ 3 more"). The parts every
case report shares (header, footer, models, pictures, pagination) are in ``blocks.py``.
"""

from __future__ import annotations

from appliance.outputs.report.blocks import (
    AMBER,
    CELL_PAD,
    CONTENT_W,
    GREEN,
    GREY,
    MARGIN,
    MAX_CELL_LINES,
    MAX_FLAG_ITEMS,
    MAX_ITEM_LINES,
    RED,
    RULE_GREY,
    TABLE_SIZE,
    WHITE,
    Badge,
    TableRow,
    draw_field_table,
    draw_header,
    draw_models,
    draw_table_row,
    flag_lines,
    paginate,
    table_row,
    wrap_text,
)
from appliance.outputs.report.blocks import Column as _Column
from appliance.outputs.report.blocks import Line as _Line
from appliance.outputs.report.blocks import badge as _badge
from appliance.outputs.report.blocks import box as _box
from appliance.outputs.report.blocks import clip_drawn as _clip_lines_of
from appliance.outputs.report.blocks import draw_lines as _draw_lines
from appliance.outputs.report.blocks import height as _height
from appliance.outputs.report.blocks import hline as _hline
from appliance.outputs.report.blocks import wrapped as _wrapped
from appliance.outputs.report.model import CaseReportData, ReportControl, ReportField
from appliance.outputs.report.pdf import BLACK, Colour, PdfPage, PdfWriter, to_winansi

# paginate and wrap_text are the blocks' own, used here and named here for the tests.
__all__ = ["COLUMNS", "CONTROL_STYLES", "PERCENT_LABELS", "TITLE", "paginate", "render_pdf",
           "wrap_text"]

TITLE = "HER2 IHC case report"

SCORE_COLOURS: dict[str, Colour] = {
    "0": (0.42, 0.47, 0.53), "1+": (0.18, 0.42, 0.72), "2+": AMBER, "3+": RED,
}
CONTROL_STYLES: dict[str, tuple[Colour, str]] = {
    "valid": (GREEN, "VALID"), "failed": (RED, "FAILED"), "not_checked": (AMBER, "NOT CHECKED"),
}
PERCENT_LABELS = (
    ("complete_intense", "complete intense"),
    ("complete_weak_moderate", "complete weak/moderate"),
    ("incomplete_moderate_intense", "incomplete moderate/intense"),
    ("incomplete_faint", "incomplete faint"),
    ("none", "none"),
)

COLUMNS = (
    _Column("#", 16), _Column("Picture", 86), _Column("Field", 96), _Column("Score", 60),
    _Column("Tumour cells", 34), _Column("Compl. intense %", 40), _Column("Compl. any %", 36),
    _Column("Stained %", 38), _Column("Counted", 38),
    _Column("Note", CONTENT_W - 444),
)


def _score_text(score: str | None) -> str:
    return score if score is not None else "not scorable"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _od(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _draw_header(page: PdfPage, data: CaseReportData) -> float:
    """Title, case id, open/closed, device and software; returns the top below it."""
    return draw_header(page, TITLE, case_id=data.case_id, opened_at=data.opened_at,
                       closed_at=data.closed_at, device_id=data.device_id,
                       software_version=data.software_version)


def _score_lines(data: CaseReportData, width: float) -> list[_Line]:
    """Text beside the case-score badge."""
    lines = [_Line("Case score (pooled over counted fields)", 8, colour=GREY)]
    lines += _wrapped(f"{_score_text(data.score)}  {data.category or ''}".strip(), width, 14,
                      bold=True, limit=2)
    lines += _wrapped(f"{data.fields_counted} of {data.fields_total} fields counted, "
                      f"{data.tumour_cells} tumour cells", width, 9)
    lines += _wrapped(f"Rule: {data.rule}", width, 8, limit=4)
    pooled = "   ".join(f"{label} {_pct(data.percent.get(key))}"
                        for key, label in PERCENT_LABELS if key in data.percent)
    if pooled:
        lines += _wrapped(pooled, width, 7.5, colour=GREY, limit=3)
    return lines


def _control_lines(control: ReportControl, width: float) -> list[_Line]:
    """Text of the control box under its coloured title strip."""
    lines = _wrapped(f"expected {control.expected or '-'}   measured "
                     f"{control.measured_score or '-'}", width, 8.5, bold=True)
    lines += _wrapped(f"membrane OD {_od(control.measured_od)} (reference "
                      f"{_od(control.reference_od)}, ratio "
                      f"{'-' if control.ratio is None else f'{control.ratio:.2f}'})", width, 8)
    lines += _wrapped(f"{control.cells} cells in {control.fields} fields", width, 8)
    lines += _wrapped(f"calibration: {control.calibration}", width, 8, limit=2)
    for reason in control.reasons[:MAX_FLAG_ITEMS]:
        lines += _wrapped(f"- {reason}", width, 7.5, limit=MAX_ITEM_LINES)
    if len(control.reasons) > MAX_FLAG_ITEMS:
        lines.append(_Line(f"+ {len(control.reasons) - MAX_FLAG_ITEMS} more (HTML report)",
                           7.5, colour=GREY))
    return lines


def _draw_summary(page: PdfPage, data: CaseReportData, top: float) -> float:
    """The case-score box and the control box side by side; returns the top below them."""
    gap = 10.0
    score_w = CONTENT_W * 0.58
    control_w = CONTENT_W - score_w - gap
    badge = 78.0
    score_lines = _score_lines(data, score_w - badge - 18)
    control_x = MARGIN + score_w + gap
    control_lines = _control_lines(data.control, control_w - 12)
    strip = 18.0
    h = max(badge + 12, _height(score_lines) + 12, strip + _height(control_lines) + 10)
    _box(page, MARGIN, top, score_w, h, stroke=RULE_GREY)
    fill = SCORE_COLOURS.get(data.score or "", GREY)
    if data.score is None:
        _badge(page, MARGIN + 6, top + 6, badge, badge, "n/s", 24, fill)
    else:
        _badge(page, MARGIN + 6, top + 6, badge, badge, data.score, 36, fill)
    _draw_lines(page, MARGIN + badge + 14, top + 4, score_lines)
    colour, word = CONTROL_STYLES[data.control.status]
    _box(page, control_x, top, control_w, h, stroke=colour)
    _box(page, control_x, top, control_w, strip, fill=colour)
    ink = BLACK if colour == AMBER else WHITE
    page.text(control_x + 6, page.height - top - 13, f"Control {word}", size=11, bold=True,
              colour=ink)
    _draw_lines(page, control_x + 6, top + strip + 3, control_lines)
    return top + h + 8


def _draw_flags(page: PdfPage, data: CaseReportData, top: float) -> float:
    """Heterogeneity, borderline and warnings in three columns; returns the top below."""
    gap = 8.0
    width = (CONTENT_W - 2 * gap) / 3
    groups = (("Heterogeneity", data.heterogeneity, BLACK),
              ("Borderline", data.borderline, BLACK),
              ("Warnings", data.warnings, RED if data.warnings else BLACK))
    bottom = top
    for i, (title, items, colour) in enumerate(groups):
        lines = flag_lines(title, items, width, colour)
        bottom = max(bottom, _draw_lines(page, MARGIN + i * (width + gap), top, lines))
    return bottom + 6


def _draw_models(page: PdfPage, data: CaseReportData, top: float) -> float:
    """Models with sha256 prefix and validation set, and the config hash."""
    return draw_models(page, data.models, data.config_sha256, top)


def _cell_lines(row: ReportField) -> list[list[_Line]]:
    """Text of each table column for one field (the picture column has none)."""
    def cell(text: str, col: int, *, bold: bool = False, colour: Colour = BLACK) -> list[_Line]:
        width = COLUMNS[col].width - 2 * CELL_PAD
        return _wrapped(text, width, TABLE_SIZE, bold=bold, colour=colour, limit=MAX_CELL_LINES)

    scored = row.status == "scored"
    # A scored field's score is drawn as a badge above these lines, not as text here.
    score_lines = [] if scored and row.score else cell("not scorable", 3, bold=True, colour=GREY)
    return [
        cell(str(row.index), 0, bold=True),
        [],
        _clip_lines_of(cell(row.role, 2, bold=True) + cell(row.created_at, 2)
                       + cell(row.source, 2)),
        score_lines + cell(row.category or "", 3),
        cell(str(row.tumour_cells), 4),
        cell(f"{row.percent_complete_intense:.1f}", 5),
        cell(f"{row.percent_complete:.1f}", 6),
        cell(f"{row.percent_stained:.1f}", 7),
        cell("yes" if row.counted else "no", 8, bold=not row.counted),
        cell(row.note, 9, colour=RED if "differs" in row.note else BLACK),
    ]


def _make_row(writer: PdfWriter, row: ReportField) -> TableRow:
    """Measure one table row; a scored field's score is a badge over its Score cell."""
    badge = (Badge(3, row.score, SCORE_COLOURS.get(row.score, GREY))
             if row.status == "scored" and row.score else None)
    return table_row(writer, COLUMNS, _cell_lines(row), row.thumbnail_jpeg,
                     shaded=not row.counted, badge=badge)


def _draw_continuation_header(page: PdfPage, data: CaseReportData) -> float:
    """The short header of pages 2..n; returns the top below it."""
    text = (f"{TITLE} (continued)   case {data.case_id}   case score "
            f"{_score_text(data.score)} {data.category or ''}")
    lines = _wrapped(text, CONTENT_W, 10, bold=True, limit=2)
    top = _draw_lines(page, MARGIN, MARGIN, lines)
    _hline(page, MARGIN, MARGIN + CONTENT_W, top + 4, colour=BLACK, width=0.8)
    return top + 10


def render_pdf(data: CaseReportData) -> bytes:
    """The case report as PDF bytes: one A4 page when the field table fits, more if not."""
    writer = PdfWriter(title=to_winansi(f"{TITLE} {data.case_id}"))
    first = writer.add_page()
    top = _draw_header(first, data)
    top = _draw_summary(first, data, top)
    top = _draw_flags(first, data, top)
    top = _draw_models(first, data, top)
    rows = [_make_row(writer, field) for field in data.fields]
    draw_field_table(writer, first, top, columns=COLUMNS, heights=[r.height for r in rows],
                     draw_row=lambda page, i, row_top: draw_table_row(page, COLUMNS, rows[i],
                                                                     row_top),
                     continuation=lambda page: _draw_continuation_header(page, data),
                     research_use=data.research_use, generated_at=data.generated_at,
                     case_id=data.case_id)
    return writer.to_bytes()
