"""Lay out the HEp-2 case report (one patient's well) on A4 pages.

Page 1 carries the header, the well's call beside the kit controls, the warnings, the
models and the start of the field table; the table continues on further pages under a
short header. The drawing blocks are the HER2 report's (``blocks.py``).
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
    Column,
    Line,
    badge,
    box,
    clip_drawn,
    draw_field_table,
    draw_header,
    draw_lines,
    draw_models,
    draw_table_row,
    flag_lines,
    height,
    hline,
    table_row,
    wrapped,
)
from appliance.outputs.report.model import Hep2CaseReportData, Hep2ReportField
from appliance.outputs.report.pdf import BLACK, Colour, PdfPage, PdfWriter, to_winansi

TITLE = "HEp-2 IIF (ANA) case report"
POSITIVE_COLOUR: Colour = (0.18, 0.42, 0.72)
CONTROL_STYLES: dict[str, tuple[Colour, str]] = {
    "valid": (GREEN, "KIT CONTROLS VALID"), "incomplete": (AMBER, "KIT CONTROLS INCOMPLETE"),
    "failed": (RED, "KIT CONTROL FAILED"), "not_checked": (AMBER, "KIT CONTROLS NOT CHECKED"),
}
COLUMNS = (
    Column("#", 16), Column("Picture", 86), Column("Field", 96), Column("Call", 96),
    Column("Intensity", 58), Column("Cells", 34), Column("Counted", 38),
    Column("Note", CONTENT_W - 424),
)


def call_words(data: Hep2CaseReportData) -> tuple[str, str]:
    """(badge text, headline) of the well's call."""
    if data.positive is None:
        return "n/s", "not scorable"
    if not data.positive:
        return "NEG", "ANA negative (AC-0)"
    return "POS", "ANA positive " + " + ".join(p.icap for p in data.patterns)


def _call_lines(data: Hep2CaseReportData, width: float) -> list[Line]:
    """Text beside the call badge."""
    lines = [Line("Well call (its fields pooled, each counted once)", 8, colour=GREY)]
    lines += wrapped(call_words(data)[1], width, 14, bold=True, limit=2)
    if data.positive:
        for p in data.patterns:
            lines += wrapped(f"{p.icap} {p.label}: {p.share:.0%} of cells ({p.evidence})",
                             width, 9, limit=2)
    if data.reason and data.positive is None:
        lines += wrapped(data.reason, width, 9, colour=RED, limit=3)
    if data.intensity:
        lines += wrapped(f"Intensity {data.intensity}", width, 9)
    for titre in data.titres:
        lines += wrapped(f"Titre {titre}", width, 9, bold=True, limit=2)
    for well in data.wells:
        lines += wrapped(well, width, 8, colour=GREY, limit=2)
    lines += wrapped(f"{data.fields_counted} of {data.fields_total} patient fields counted, "
                     f"{data.cells}", width, 8.5, colour=GREY)
    return lines


def _control_lines(data: Hep2CaseReportData, width: float) -> list[Line]:
    """Each kit control decision, latest last (a repeated control shows both)."""
    if not data.checks:
        return wrapped(data.no_check_words(), width, 8.5, bold=True)
    lines: list[Line] = []
    if data.slide:
        lines += wrapped(f"slide {data.slide}: its wells share the kit controls", width, 7.5,
                         colour=GREY)
    for check in data.checks[-MAX_FLAG_ITEMS:]:
        lines += wrapped(check.title(), width, 8.5, bold=True,
                         colour=BLACK if check.valid else RED)
        for reason in check.reasons:
            lines += wrapped(f"- {reason}", width, 7.5, limit=MAX_ITEM_LINES)
    if len(data.checks) > MAX_FLAG_ITEMS:
        lines.append(Line(f"+ {len(data.checks) - MAX_FLAG_ITEMS} earlier (HTML report)", 7.5,
                          colour=GREY))
    return lines


def _draw_summary(page: PdfPage, data: Hep2CaseReportData, top: float) -> float:
    """The call box and the kit control box side by side; returns the top below them."""
    gap = 10.0
    call_w = CONTENT_W * 0.58
    control_w = CONTENT_W - call_w - gap
    side = 64.0
    call_lines = _call_lines(data, call_w - side - 18)
    control_lines = _control_lines(data, control_w - 12)
    strip = 18.0
    h = max(side + 12, height(call_lines) + 12, strip + height(control_lines) + 10)
    box(page, MARGIN, top, call_w, h, stroke=RULE_GREY)
    word = call_words(data)[0]
    fill = POSITIVE_COLOUR if data.positive else GREY
    badge(page, MARGIN + 6, top + 6, side, side, word, 22, fill)
    draw_lines(page, MARGIN + side + 14, top + 4, call_lines)
    control_x = MARGIN + call_w + gap
    colour, title = CONTROL_STYLES[data.control_status]
    box(page, control_x, top, control_w, h, stroke=colour)
    box(page, control_x, top, control_w, strip, fill=colour)
    page.text(control_x + 6, page.height - top - 13, title, size=11, bold=True,
              colour=BLACK if colour == AMBER else (1.0, 1.0, 1.0))
    draw_lines(page, control_x + 6, top + strip + 3, control_lines)
    return top + h + 8


def _draw_warnings(page: PdfPage, data: Hep2CaseReportData, top: float) -> float:
    lines = flag_lines("Warnings", data.warnings, CONTENT_W, RED if data.warnings else BLACK)
    return draw_lines(page, MARGIN, top, lines) + 6


def _cell_lines(row: Hep2ReportField) -> list[list[Line]]:
    def cell(text: str, col: int, *, bold: bool = False, colour: Colour = BLACK) -> list[Line]:
        return wrapped(text, COLUMNS[col].width - 2 * CELL_PAD, TABLE_SIZE, bold=bold,
                       colour=colour, limit=MAX_CELL_LINES)

    return [
        cell(str(row.index), 0, bold=True),
        [],
        clip_drawn(cell(row.role, 2, bold=True) + cell(row.created_at, 2) + cell(row.source, 2)),
        cell(row.call, 3, bold=True, colour=GREY if row.status != "scored" else BLACK),
        cell(row.intensity or "-", 4),
        cell(str(row.cells), 5),
        cell("yes" if row.counted else "no", 6, bold=not row.counted),
        cell(row.note, 7),
    ]


def _draw_continuation_header(page: PdfPage, data: Hep2CaseReportData) -> float:
    text = f"{TITLE} (continued)   case {data.case_id}   {call_words(data)[1]}"
    top = draw_lines(page, MARGIN, MARGIN, wrapped(text, CONTENT_W, 10, bold=True, limit=2))
    hline(page, MARGIN, MARGIN + CONTENT_W, top + 4, colour=BLACK, width=0.8)
    return top + 10


def render_hep2_pdf(data: Hep2CaseReportData) -> bytes:
    """The HEp-2 case report as PDF bytes: one A4 page when the table fits, more if not."""
    writer = PdfWriter(title=to_winansi(f"{TITLE} {data.case_id}"))
    first = writer.add_page()
    top = draw_header(first, TITLE, case_id=data.case_id, opened_at=data.opened_at,
                      closed_at=data.closed_at, device_id=data.device_id,
                      software_version=data.software_version)
    top = _draw_summary(first, data, top)
    top = _draw_warnings(first, data, top)
    top = draw_models(first, data.models, data.config_sha256, top)
    rows = [table_row(writer, COLUMNS, _cell_lines(f), f.thumbnail_jpeg, shaded=not f.counted)
            for f in data.fields]
    draw_field_table(writer, first, top, columns=COLUMNS, heights=[r.height for r in rows],
                     draw_row=lambda page, i, row_top: draw_table_row(page, COLUMNS, rows[i],
                                                                     row_top),
                     continuation=lambda page: _draw_continuation_header(page, data),
                     research_use=data.research_use, generated_at=data.generated_at,
                     case_id=data.case_id)
    return writer.to_bytes()
