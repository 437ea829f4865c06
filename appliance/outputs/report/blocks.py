"""The building blocks every case report's A4 pages are drawn with (HER2 and HEp-2).

Text is measured with the Helvetica metrics and wrapped, never clipped silently: what does
not fit is cut with "..." and the callers count what they leave out. Positions are given as
distances from the page top (the PDF's origin is at the bottom).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from appliance.outputs.report.model import ReportModel
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

MARGIN = 36.0
CONTENT_W = A4_WIDTH - 2 * MARGIN
THUMB_H = 60.0  # thumbnail height in the table, points
THUMB_MAX_PX = 320  # pictures wider than this are shrunk before embedding
CELL_PAD = 2.5
TABLE_SIZE = 7.5
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


@dataclass(frozen=True)
class Line:
    """One line of text ready to draw: what, how big, how heavy, what colour."""

    text: str
    size: float
    bold: bool = False
    colour: Colour = BLACK

    @property
    def leading(self) -> float:
        return self.size * 1.22


@dataclass(frozen=True)
class Thumb:
    """An embedded picture and the box it is drawn in, in points."""

    name: str
    width: float
    height: float


@dataclass(frozen=True)
class Column:
    title: str
    width: float


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


def clip_lines(lines: list[str], limit: int) -> list[str]:
    """At most ``limit`` lines; a cut is marked with "..." on the last line kept."""
    if len(lines) <= limit:
        return lines
    return [*lines[:limit - 1], lines[limit - 1] + " ..."]


def wrapped(text: str, width: float, size: float, *, bold: bool = False,
            colour: Colour = BLACK, limit: int = 1000) -> list[Line]:
    """``text`` wrapped to ``width`` as drawable lines, at most ``limit`` of them."""
    rows = clip_lines(wrap_text(text, width - 2, size, bold=bold), limit)
    return [Line(row, size, bold, colour) for row in rows]


def clip_drawn(lines: list[Line], limit: int = MAX_CELL_LINES) -> list[Line]:
    """At most ``limit`` drawable lines, the cut marked with "..."."""
    if len(lines) <= limit:
        return lines
    last = lines[limit - 1]
    return [*lines[:limit - 1], Line(last.text + " ...", last.size, last.bold, last.colour)]


def draw_lines(page: PdfPage, x: float, top: float, lines: Sequence[Line]) -> float:
    """Draw lines downward from ``top`` (distance from the page top); returns the new top."""
    for line in lines:
        top += line.leading
        page.text(x, page.height - top + line.size * 0.22, line.text, size=line.size,
                  bold=line.bold, colour=line.colour)
    return top


def height(lines: Sequence[Line]) -> float:
    """How tall ``lines`` are when drawn."""
    return sum(line.leading for line in lines)


def box(page: PdfPage, x: float, top: float, w: float, h: float, *,
        fill: Colour | None = None, stroke: Colour | None = None) -> None:
    """A rectangle given by its top edge measured from the page top."""
    page.rect(x, page.height - top - h, w, h, fill=fill, stroke=stroke)


def hline(page: PdfPage, x1: float, x2: float, top: float, colour: Colour = RULE_GREY,
          width: float = 0.5) -> None:
    """A horizontal rule at ``top``."""
    page.line(x1, page.height - top, x2, page.height - top, colour=colour, width=width)


def badge(page: PdfPage, x: float, top: float, w: float, h: float, text: str, size: float,
          fill: Colour) -> None:
    """A filled rectangle with ``text`` centred in bold (black on amber, else white)."""
    box(page, x, top, w, h, fill=fill)
    ink = BLACK if fill == AMBER else WHITE
    tw = text_width(text, size, bold=True)
    baseline = top + h / 2 + size * 0.35
    page.text(x + (w - tw) / 2, page.height - baseline, text, size=size, bold=True, colour=ink)


def flag_lines(title: str, items: Sequence[str], width: float, colour: Colour) -> list[Line]:
    """One flag group: a bold title, then its items (capped) or "none"."""
    lines = [Line(title, 8.5, bold=True, colour=colour)]
    if not items:
        return [*lines, Line("none", 7.5, colour=GREY)]
    for item in items[:MAX_FLAG_ITEMS]:
        lines += wrapped(f"- {item}", width, 7.5, limit=MAX_ITEM_LINES)
    if len(items) > MAX_FLAG_ITEMS:
        lines.append(Line(f"+ {len(items) - MAX_FLAG_ITEMS} more (HTML report)", 7.5,
                          colour=GREY))
    return lines


def draw_header(page: PdfPage, title: str, *, case_id: str, opened_at: str,
                closed_at: str | None, device_id: str, software_version: str) -> float:
    """Title, case id, open/closed, device and software; returns the top below it."""
    top = MARGIN
    page.text(MARGIN, page.height - top - 16, title, size=16, bold=True)
    case_lines = wrapped(f"Case {case_id}", CONTENT_W * 0.45, 12, bold=True, limit=2)
    right = MARGIN + CONTENT_W
    for i, line in enumerate(case_lines):
        w = text_width(line.text, 12, bold=True)
        page.text(right - w, page.height - top - 14 - 14 * i, line.text, size=12, bold=True)
    top += max(22.0, 14.0 * len(case_lines) + 6)
    closed = closed_at if closed_at is not None else "OPEN - case still open"
    info = (f"Opened {opened_at}   Closed {closed}   Device {device_id}   "
            f"Software {software_version}")
    x = MARGIN
    if closed_at is None:
        badge(page, MARGIN, top, 46, 16, "OPEN", 11, RED)
        x += 52
    lines = wrapped(info, right - x, 8.5, colour=GREY, limit=3)
    top = max(draw_lines(page, x, top, lines), top + (16 if closed_at is None else 0))
    hline(page, MARGIN, right, top + 4, colour=BLACK, width=0.8)
    return top + 10


def draw_models(page: PdfPage, models: Sequence[ReportModel], config_sha256: str,
                top: float) -> float:
    """Models with sha256 prefix and validation set, and the config hash."""
    lines = [Line("Models and configuration", 8.5, bold=True)]
    for model in models:
        lines += wrapped(f"{model.name} ({model.precision})   sha256 {model.sha256[:16]}   "
                         f"validated on {model.validated_on}", CONTENT_W, 7.5, limit=2)
    if not models:
        lines.append(Line("no model recorded", 7.5, colour=RED))
    lines.append(Line(f"config sha256 {config_sha256[:16]}", 7.5))
    top = draw_lines(page, MARGIN, top, lines)
    hline(page, MARGIN, MARGIN + CONTENT_W, top + 4)
    return top + 8


def prepare_thumbnail(writer: PdfWriter, jpeg: bytes | None, box_w: float) -> Thumb | str:
    """Embed a field picture (shrunk to <= 320 px wide) to fit ``box_w`` points wide, or say
    in words why there is none."""
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
    scale = min(THUMB_H / h, box_w / w)
    return Thumb(writer.add_jpeg(encoded.tobytes()), w * scale, h * scale)


def footer_lines(research_use: str) -> list[Line]:
    return wrapped(research_use, CONTENT_W, 7, colour=GREY, limit=3)


def draw_footer(page: PdfPage, *, research_use: str, generated_at: str, case_id: str,
                number: int, total: int) -> None:
    """Research-use line, generation time and "page i of n" at the foot of a page."""
    lines = footer_lines(research_use)
    bottom = page.height - MARGIN
    top = bottom - height(lines) - 12
    hline(page, MARGIN, MARGIN + CONTENT_W, top - 3)
    draw_lines(page, MARGIN, top, lines)
    stamp = f"Generated {generated_at}   case {case_id}"
    page.text(MARGIN, MARGIN - 2, clip_lines(wrap_text(stamp, CONTENT_W * 0.7, 7), 1)[0],
              size=7, colour=GREY)
    label = f"page {number} of {total}"
    page.text(MARGIN + CONTENT_W - text_width(label, 8, bold=True), MARGIN - 2, label, size=8,
              bold=True)


def footer_height(research_use: str) -> float:
    """Space the footer takes from the page bottom, with a gap above its rule."""
    return MARGIN + height(footer_lines(research_use)) + 12 + 8


BADGE_H = 13.0  # a table cell's badge and the gap under it


@dataclass(frozen=True)
class Badge:
    """A small coloured label at the top of one table cell (a field's score)."""

    column: int
    text: str
    fill: Colour


@dataclass(frozen=True)
class TableRow:
    """One measured field row: each column's lines, the picture (column 1), the height."""

    cells: list[list[Line]]
    thumb: Thumb | str
    height: float
    shaded: bool  # not counted: drawn on a grey band
    badge: Badge | None = None


def table_row(writer: PdfWriter, columns: Sequence[Column], cells: list[list[Line]],
              jpeg: bytes | None, *, shaded: bool, badge: Badge | None = None) -> TableRow:
    """Measure one row: the taller of its picture (column 1; or why there is none, in
    words) and its longest cell."""
    thumb = prepare_thumbnail(writer, jpeg, columns[1].width - 2 * CELL_PAD)
    if isinstance(thumb, str):
        cells[1] = wrapped(thumb, columns[1].width - 2 * CELL_PAD, TABLE_SIZE, colour=GREY)
    text_h = max(height(c) + (BADGE_H if badge is not None and i == badge.column else 0)
                 for i, c in enumerate(cells))
    pic_h = thumb.height if isinstance(thumb, Thumb) else 0.0
    return TableRow(cells, thumb, max(text_h, pic_h) + 2 * CELL_PAD + 1, shaded, badge)


def draw_table_row(page: PdfPage, columns: Sequence[Column], row: TableRow,
                   top: float) -> float:
    """One row with its picture, badge and grid lines; returns its bottom."""
    if row.shaded:
        box(page, MARGIN, top, CONTENT_W, row.height, fill=SHADE)
    x = MARGIN
    for i, (column, lines) in enumerate(zip(columns, row.cells, strict=True)):
        cell_top = top + CELL_PAD - 1
        if i == 1 and isinstance(row.thumb, Thumb):
            page.image(row.thumb.name, x + CELL_PAD, page.height - top - CELL_PAD
                       - row.thumb.height, row.thumb.width, row.thumb.height)
        if row.badge is not None and i == row.badge.column:
            badge(page, x + CELL_PAD, top + CELL_PAD, 24, 11, row.badge.text, 8,
                  row.badge.fill)
            cell_top += BADGE_H
        draw_lines(page, x + CELL_PAD, cell_top, lines)
        if i:
            page.line(x, page.height - top, x, page.height - top - row.height,
                      colour=RULE_GREY, width=0.4)
        x += column.width
    hline(page, MARGIN, MARGIN + CONTENT_W, top + row.height)
    return top + row.height


def table_header_lines(columns: Sequence[Column]) -> list[list[Line]]:
    return [wrapped(c.title, c.width - 2 * CELL_PAD, 7, bold=True) for c in columns]


def table_header_height(columns: Sequence[Column]) -> float:
    """How tall the shaded band of column titles is."""
    return max(height(lines) for lines in table_header_lines(columns)) + 2 * CELL_PAD


def draw_table_header(page: PdfPage, columns: Sequence[Column], top: float) -> float:
    """Column titles over a shaded band; returns the top of the first row."""
    heads = table_header_lines(columns)
    h = max(height(lines) for lines in heads) + 2 * CELL_PAD
    box(page, MARGIN, top, CONTENT_W, h, fill=SHADE)
    x = MARGIN
    for column, lines in zip(columns, heads, strict=True):
        draw_lines(page, x + CELL_PAD, top + CELL_PAD - 1, lines)
        x += column.width
    hline(page, MARGIN, MARGIN + CONTENT_W, top + h, colour=BLACK)
    return top + h


def draw_field_table(writer: PdfWriter, first: PdfPage, top: float, *,
                     columns: Sequence[Column], heights: Sequence[float],
                     draw_row: Callable[[PdfPage, int, float], float],
                     continuation: Callable[[PdfPage], float], research_use: str,
                     generated_at: str, case_id: str) -> None:
    """The field table from ``top`` of page 1 on, continued on further pages (each under
    ``continuation``'s short header), then every page's footer. ``draw_row(page, i, top)``
    draws row ``i`` and returns its bottom; ``heights`` are the rows' heights."""
    header_h = table_header_height(columns)
    bottom = A4_HEIGHT - footer_height(research_use)
    later_top = continuation(PdfWriter().add_page())  # measure only
    plan = paginate(heights, bottom - top - header_h, bottom - later_top - header_h)
    for number, indices in enumerate(plan):
        page = first if number == 0 else writer.add_page()
        if number:
            top = continuation(page)
        if not indices:
            continue
        top = draw_table_header(page, columns, top)
        for i in indices:
            top = draw_row(page, i, top)
    if not heights:
        first.text(MARGIN, first.height - top - 10, "No fields recorded in this case.", size=9,
                   colour=RED)
    for number, page in enumerate(writer.pages, start=1):
        draw_footer(page, research_use=research_use, generated_at=generated_at,
                    case_id=case_id, number=number, total=len(writer.pages))


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
