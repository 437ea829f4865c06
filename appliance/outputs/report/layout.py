"""Lay out the case report on A4 pages and render it with the minimal PDF writer.

Page 1 carries the header, the case-score and control boxes, the flags, the models and
the start of the per-field table; when the table does not fit it continues on further
pages under a short header. Every page has the research-use line and "page i of n" at
the foot. Text is measured with the Helvetica metrics and wrapped, never clipped
silently: what does not fit is cut with "..." and counted ("+ 3 more").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from appliance.outputs.report.model import CaseReportData, ReportControl, ReportField
from appliance.outputs.report.pdf import (
    A4_HEIGHT,
    A4_WIDTH,
    BLACK,
    Colour,
    PdfPage,
    PdfWriter,
    text_width,
    to_winansi,
)

TITLE = "HER2 IHC case report"
MARGIN = 36.0
CONTENT_W = A4_WIDTH - 2 * MARGIN
THUMB_H = 60.0  # thumbnail height in the table, points
THUMB_MAX_PX = 320  # pictures wider than this are shrunk before embedding
CELL_PAD = 2.5
TABLE_SIZE = 7.5
TABLE_LEADING = 9.0
MAX_CELL_LINES = 7  # a longer note is cut with "..." so one row cannot outgrow a page
MAX_FLAG_ITEMS = 6  # per flag group on page 1; the HTML report lists them all
MAX_ITEM_LINES = 3

WHITE: Colour = (1.0, 1.0, 1.0)
GREY: Colour = (0.42, 0.45, 0.48)
RULE_GREY: Colour = (0.7, 0.72, 0.75)
SHADE: Colour = (0.93, 0.94, 0.95)
GREEN: Colour = (0.13, 0.55, 0.27)
RED: Colour = (0.78, 0.13, 0.13)
AMBER: Colour = (0.93, 0.62, 0.05)

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


@dataclass(frozen=True)
class _Line:
    """One line of text ready to draw: what, how big, how heavy, what colour."""

    text: str
    size: float
    bold: bool = False
    colour: Colour = BLACK

    @property
    def leading(self) -> float:
        return self.size * 1.22


@dataclass(frozen=True)
class _Thumb:
    """An embedded picture and the box it is drawn in, in points."""

    name: str
    width: float
    height: float


@dataclass(frozen=True)
class _Column:
    title: str
    width: float


COLUMNS = (
    _Column("#", 16), _Column("Picture", 86), _Column("Field", 96), _Column("Score", 60),
    _Column("Tumour cells", 34), _Column("Compl. intense %", 40), _Column("Compl. any %", 36),
    _Column("Stained %", 38), _Column("Counted", 38),
    _Column("Note", CONTENT_W - 444),
)


def wrap_text(text: str, width: float, size: float, *, bold: bool = False) -> list[str]:
    """Break ``text`` into lines no wider than ``width`` points (Helvetica at ``size``).

    Breaks at spaces; a word wider than the line is split between characters.
    Newlines start a new line. Characters are mapped to WinAnsi first, so the
    width measured is the width drawn.
    """
    lines: list[str] = []
    for paragraph in text.split("\n"):
        current = ""
        for word in to_winansi(paragraph).split(" "):
            candidate = f"{current} {word}" if current else word
            if text_width(candidate, size, bold=bold) <= width:
                current = candidate
                continue
            if current:
                lines.append(current)
            current = ""
            for ch in word:  # only reached when the word alone may be too wide
                if current and text_width(current + ch, size, bold=bold) > width:
                    lines.append(current)
                    current = ""
                current += ch
        lines.append(current)
    return lines


def _clip_lines(lines: list[str], limit: int) -> list[str]:
    """At most ``limit`` lines; a cut is marked with "..." on the last line kept."""
    if len(lines) <= limit:
        return lines
    return [*lines[:limit - 1], lines[limit - 1] + " ..."]


def _wrapped(text: str, width: float, size: float, *, bold: bool = False,
             colour: Colour = BLACK, limit: int = 1000) -> list[_Line]:
    """``text`` wrapped to ``width`` as drawable lines, at most ``limit`` of them."""
    rows = _clip_lines(wrap_text(text, width - 2, size, bold=bold), limit)
    return [_Line(row, size, bold, colour) for row in rows]


def _draw_lines(page: PdfPage, x: float, top: float, lines: Sequence[_Line]) -> float:
    """Draw lines downward from ``top`` (distance from the page top); returns the new top."""
    for line in lines:
        top += line.leading
        page.text(x, page.height - top + line.size * 0.22, line.text, size=line.size,
                  bold=line.bold, colour=line.colour)
    return top


def _height(lines: Sequence[_Line]) -> float:
    return sum(line.leading for line in lines)


def _box(page: PdfPage, x: float, top: float, w: float, h: float, *,
         fill: Colour | None = None, stroke: Colour | None = None) -> None:
    """A rectangle given by its top edge measured from the page top."""
    page.rect(x, page.height - top - h, w, h, fill=fill, stroke=stroke)


def _hline(page: PdfPage, x1: float, x2: float, top: float, colour: Colour = RULE_GREY,
           width: float = 0.5) -> None:
    page.line(x1, page.height - top, x2, page.height - top, colour=colour, width=width)


def _badge(page: PdfPage, x: float, top: float, w: float, h: float, text: str, size: float,
           fill: Colour) -> None:
    """A filled rectangle with ``text`` centred in bold (black on amber, else white)."""
    _box(page, x, top, w, h, fill=fill)
    ink = BLACK if fill == AMBER else WHITE
    tw = text_width(text, size, bold=True)
    baseline = top + h / 2 + size * 0.35
    page.text(x + (w - tw) / 2, page.height - baseline, text, size=size, bold=True, colour=ink)


def _score_text(score: str | None) -> str:
    return score if score is not None else "not scorable"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _od(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _draw_header(page: PdfPage, data: CaseReportData) -> float:
    """Title, case id, open/closed, device and software; returns the top below it."""
    top = MARGIN
    page.text(MARGIN, page.height - top - 16, TITLE, size=16, bold=True)
    case_text = f"Case {data.case_id}"
    case_lines = _wrapped(case_text, CONTENT_W * 0.45, 12, bold=True, limit=2)
    right = MARGIN + CONTENT_W
    for i, line in enumerate(case_lines):
        w = text_width(line.text, 12, bold=True)
        page.text(right - w, page.height - top - 14 - 14 * i, line.text, size=12, bold=True)
    top += max(22.0, 14.0 * len(case_lines) + 6)
    closed = data.closed_at if data.closed_at is not None else "OPEN - case still open"
    info = (f"Opened {data.opened_at}   Closed {closed}   Device {data.device_id}   "
            f"Software {data.software_version}")
    x = MARGIN
    if data.closed_at is None:
        _badge(page, MARGIN, top, 46, 16, "OPEN", 11, RED)
        x += 52
    lines = _wrapped(info, right - x, 8.5, colour=GREY, limit=3)
    top = max(_draw_lines(page, x, top, lines), top + (16 if data.closed_at is None else 0))
    _hline(page, MARGIN, right, top + 4, colour=BLACK, width=0.8)
    return top + 10


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


def _flag_lines(title: str, items: Sequence[str], width: float, colour: Colour) -> list[_Line]:
    """One flag group: a bold title, then its items (capped) or "none"."""
    lines = [_Line(title, 8.5, bold=True, colour=colour)]
    if not items:
        return [*lines, _Line("none", 7.5, colour=GREY)]
    for item in items[:MAX_FLAG_ITEMS]:
        lines += _wrapped(f"- {item}", width, 7.5, limit=MAX_ITEM_LINES)
    if len(items) > MAX_FLAG_ITEMS:
        lines.append(_Line(f"+ {len(items) - MAX_FLAG_ITEMS} more (HTML report)", 7.5,
                           colour=GREY))
    return lines


def _draw_flags(page: PdfPage, data: CaseReportData, top: float) -> float:
    """Heterogeneity, borderline and warnings in three columns; returns the top below."""
    gap = 8.0
    width = (CONTENT_W - 2 * gap) / 3
    groups = (("Heterogeneity", data.heterogeneity, BLACK),
              ("Borderline", data.borderline, BLACK),
              ("Warnings", data.warnings, RED if data.warnings else BLACK))
    bottom = top
    for i, (title, items, colour) in enumerate(groups):
        lines = _flag_lines(title, items, width, colour)
        bottom = max(bottom, _draw_lines(page, MARGIN + i * (width + gap), top, lines))
    return bottom + 6


def _draw_models(page: PdfPage, data: CaseReportData, top: float) -> float:
    """Models with sha256 prefix and validation set, and the config hash."""
    lines = [_Line("Models and configuration", 8.5, bold=True)]
    for model in data.models:
        lines += _wrapped(f"{model.name} ({model.precision})   sha256 {model.sha256[:16]}   "
                          f"validated on {model.validated_on}", CONTENT_W, 7.5, limit=2)
    if not data.models:
        lines.append(_Line("no model recorded", 7.5, colour=RED))
    lines.append(_Line(f"config sha256 {data.config_sha256[:16]}", 7.5))
    top = _draw_lines(page, MARGIN, top, lines)
    _hline(page, MARGIN, MARGIN + CONTENT_W, top + 4)
    return top + 8


def _prepare_thumbnail(writer: PdfWriter, jpeg: bytes | None) -> _Thumb | str:
    """Embed a field picture (shrunk to <= 320 px wide), or say in words why there is none."""
    if jpeg is None:
        return "no picture"
    image = cv2.imdecode(np.frombuffer(jpeg, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return "picture unreadable"
    h, w = image.shape[:2]
    if w > THUMB_MAX_PX:
        image = cv2.resize(image, (THUMB_MAX_PX, max(1, round(h * THUMB_MAX_PX / w))),
                           interpolation=cv2.INTER_AREA)
        h, w = image.shape[:2]
    # Re-encoding gives a baseline 3-channel JPEG whatever the source, which every
    # reader's DCTDecode accepts.
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        return "picture could not be encoded"
    box_w = COLUMNS[1].width - 2 * CELL_PAD
    scale = min(THUMB_H / h, box_w / w)
    return _Thumb(writer.add_jpeg(encoded.tobytes()), w * scale, h * scale)


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


def _clip_lines_of(lines: list[_Line]) -> list[_Line]:
    """At most MAX_CELL_LINES drawable lines, the cut marked with "..."."""
    if len(lines) <= MAX_CELL_LINES:
        return lines
    last = lines[MAX_CELL_LINES - 1]
    return [*lines[:MAX_CELL_LINES - 1], _Line(last.text + " ...", last.size, last.bold,
                                               last.colour)]


@dataclass(frozen=True)
class _Row:
    field: ReportField
    cells: list[list[_Line]]
    thumb: _Thumb | str
    height: float


def _make_row(writer: PdfWriter, row: ReportField) -> _Row:
    """Measure one table row: the taller of its picture and its longest cell."""
    cells = _cell_lines(row)
    thumb = _prepare_thumbnail(writer, row.thumbnail_jpeg)
    if isinstance(thumb, str):
        cells[1] = _wrapped(thumb, COLUMNS[1].width - 2 * CELL_PAD, TABLE_SIZE, colour=GREY)
    badge_h = 13.0 if row.status == "scored" and row.score else 0.0
    text_h = max(_height(c) + (badge_h if i == 3 else 0) for i, c in enumerate(cells))
    pic_h = thumb.height if isinstance(thumb, _Thumb) else 0.0
    return _Row(row, cells, thumb, max(text_h, pic_h) + 2 * CELL_PAD + 1)


def _draw_table_header(page: PdfPage, top: float) -> float:
    """Column titles over a shaded band; returns the top of the first row."""
    heads = [_wrapped(c.title, c.width - 2 * CELL_PAD, 7, bold=True) for c in COLUMNS]
    h = max(_height(lines) for lines in heads) + 2 * CELL_PAD
    _box(page, MARGIN, top, CONTENT_W, h, fill=SHADE)
    x = MARGIN
    for column, lines in zip(COLUMNS, heads, strict=True):
        _draw_lines(page, x + CELL_PAD, top + CELL_PAD - 1, lines)
        x += column.width
    _hline(page, MARGIN, MARGIN + CONTENT_W, top + h, colour=BLACK)
    return top + h


def _table_header_height() -> float:
    heads = [_wrapped(c.title, c.width - 2 * CELL_PAD, 7, bold=True) for c in COLUMNS]
    return max(_height(lines) for lines in heads) + 2 * CELL_PAD


def _draw_row(page: PdfPage, row: _Row, top: float) -> float:
    """One field row with its picture, score badge and grid lines; returns its bottom."""
    if not row.field.counted:
        _box(page, MARGIN, top, CONTENT_W, row.height, fill=SHADE)
    x = MARGIN
    for i, (column, lines) in enumerate(zip(COLUMNS, row.cells, strict=True)):
        cell_top = top + CELL_PAD - 1
        if i == 1 and isinstance(row.thumb, _Thumb):
            page.image(row.thumb.name, x + CELL_PAD, page.height - top - CELL_PAD
                       - row.thumb.height, row.thumb.width, row.thumb.height)
        if i == 3 and row.field.status == "scored" and row.field.score:
            fill = SCORE_COLOURS.get(row.field.score, GREY)
            _badge(page, x + CELL_PAD, top + CELL_PAD, 24, 11, row.field.score, 8, fill)
            cell_top += 13
        _draw_lines(page, x + CELL_PAD, cell_top, lines)
        if i:
            page.line(x, page.height - top, x, page.height - top - row.height,
                      colour=RULE_GREY, width=0.4)
        x += column.width
    _hline(page, MARGIN, MARGIN + CONTENT_W, top + row.height)
    return top + row.height


def _footer_lines(data: CaseReportData) -> list[_Line]:
    return _wrapped(data.research_use, CONTENT_W, 7, colour=GREY, limit=3)


def _draw_footer(page: PdfPage, data: CaseReportData, number: int, total: int) -> None:
    """Research-use line, generation time and "page i of n" at the foot of a page."""
    lines = _footer_lines(data)
    bottom = page.height - MARGIN
    top = bottom - _height(lines) - 12
    _hline(page, MARGIN, MARGIN + CONTENT_W, top - 3)
    _draw_lines(page, MARGIN, top, lines)
    stamp = f"Generated {data.generated_at}   case {data.case_id}"
    page.text(MARGIN, MARGIN - 2, _clip_lines(wrap_text(stamp, CONTENT_W * 0.7, 7), 1)[0],
              size=7, colour=GREY)
    label = f"page {number} of {total}"
    page.text(MARGIN + CONTENT_W - text_width(label, 8, bold=True), MARGIN - 2, label, size=8,
              bold=True)


def _footer_height(data: CaseReportData) -> float:
    """Space the footer takes from the page bottom, with a gap above its rule."""
    return MARGIN + _height(_footer_lines(data)) + 12 + 8


def _draw_continuation_header(page: PdfPage, data: CaseReportData) -> float:
    """The short header of pages 2..n; returns the top below it."""
    text = (f"{TITLE} (continued)   case {data.case_id}   case score "
            f"{_score_text(data.score)} {data.category or ''}")
    lines = _wrapped(text, CONTENT_W, 10, bold=True, limit=2)
    top = _draw_lines(page, MARGIN, MARGIN, lines)
    _hline(page, MARGIN, MARGIN + CONTENT_W, top + 4, colour=BLACK, width=0.8)
    return top + 10


def paginate(heights: Sequence[float], first: float, later: float) -> list[list[int]]:
    """Split table rows (by height) into pages: ``first`` points free on page 1, ``later``
    on the others. Page 1 may get no rows; a row taller than a page gets a page of its own.
    """
    pages: list[list[int]] = [[]]
    free = first
    for i, h in enumerate(heights):
        if h > free and (pages[-1] or len(pages) == 1):
            pages.append([])
            free = later
        pages[-1].append(i)
        free -= h
    return pages


def render_pdf(data: CaseReportData) -> bytes:
    """The case report as PDF bytes: one A4 page when the field table fits, more if not."""
    writer = PdfWriter(title=to_winansi(f"{TITLE} {data.case_id}"))
    first = writer.add_page()
    top = _draw_header(first, data)
    top = _draw_summary(first, data, top)
    top = _draw_flags(first, data, top)
    top = _draw_models(first, data, top)
    rows = [_make_row(writer, field) for field in data.fields]
    header_h = _table_header_height()
    bottom = A4_HEIGHT - _footer_height(data)
    later_top = _draw_continuation_header(PdfWriter().add_page(), data)  # measure only
    plan = paginate([r.height for r in rows], bottom - top - header_h,
                    bottom - later_top - header_h)
    for number, indices in enumerate(plan):
        page = first if number == 0 else writer.add_page()
        if number:
            top = _draw_continuation_header(page, data)
        if not indices:
            continue
        top = _draw_table_header(page, top)
        for i in indices:
            top = _draw_row(page, rows[i], top)
    if not data.fields:
        first.text(MARGIN, first.height - top - 10, "No fields recorded in this case.", size=9,
                   colour=RED)
    for number, page in enumerate(writer.pages, start=1):
        _draw_footer(page, data, number, len(writer.pages))
    return writer.to_bytes()
