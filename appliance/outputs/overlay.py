"""The overlay picture: cell outlines in their membrane-class colour and a result banner.

The banner is a strip added below the image, so no tissue is hidden. Its text is
sized against the 1280x720 7" HDMI screen and scales with the image size, so it
stays readable when the whole picture is fitted to the screen; below 480 px wide
the text stops shrinking and wraps instead. cv2's Hershey fonts are
ASCII only, so text goes through :func:`ascii_text` (µm -> um, ≤ -> <=).

The pieces are reusable by the live display (``appliance.outputs.display.live``):
rows of text (:class:`Row`, :func:`layout_rows`, :func:`draw_glyphs`) and cell
outlines scaled once per result and canvas (:func:`cell_outlines`,
:func:`draw_outlines`).
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from appliance.assays.her2.types import CellMeasurement, FieldResult, MembraneClass
from appliance.files import write_atomic
from appliance.outputs.result_json import is_research_use_only

RGB = tuple[int, int, int]
Font = tuple[int, float, int]  # (cv2 font face, scale, thickness)

# Okabe & Ito (2008) colour-blind-safe palette; each class a hue no other class shares,
# and none of them the banner's text or alert colour.
CLASS_COLOURS: dict[MembraneClass, RGB] = {
    MembraneClass.NONE: (86, 180, 233),  # sky blue
    MembraneClass.INCOMPLETE_FAINT: (240, 228, 66),  # yellow
    MembraneClass.INCOMPLETE_MODERATE_INTENSE: (204, 121, 167),  # reddish purple
    MembraneClass.COMPLETE_WEAK_MODERATE: (0, 158, 115),  # bluish green
    MembraneClass.COMPLETE_INTENSE: (213, 94, 0),  # vermillion
}
CLASS_LABELS: dict[MembraneClass, str] = {
    MembraneClass.NONE: "no staining",
    MembraneClass.INCOMPLETE_FAINT: "incomplete faint",
    MembraneClass.INCOMPLETE_MODERATE_INTENSE: "incomplete mod./intense",
    MembraneClass.COMPLETE_WEAK_MODERATE: "complete weak/mod.",
    MembraneClass.COMPLETE_INTENSE: "complete intense",
}
BANNER_BG: RGB = (28, 28, 28)
TEXT_COLOUR: RGB = (255, 255, 255)
ALERT_COLOUR: RGB = (230, 159, 0)  # Okabe-Ito orange: not scorable, warnings, research use
RESEARCH_USE_LINE = "RESEARCH USE ONLY - validated on generated data only"

REFERENCE_WIDTH = 1280  # the 7" HDMI screen the banner is designed for
REFERENCE_HEIGHT = 720
MIN_LAYOUT_WIDTH = 480  # narrower images keep this text size and wrap
_SMALL_FONT = cv2.FONT_HERSHEY_SIMPLEX
_BIG_FONT = cv2.FONT_HERSHEY_DUPLEX

_ASCII_REPLACEMENTS = {
    "µ": "u", "μ": "u", "≤": "<=", "≥": ">=", "–": "-", "—": "-", "×": "x", "°": " deg",
    "‘": "'", "’": "'", "“": '"', "”": '"', "…": "...", "±": "+/-", "→": "->",
}


def ascii_text(text: str) -> str:
    """Text that cv2.putText can draw: known symbols spelled out, accents dropped."""
    for symbol, plain in _ASCII_REPLACEMENTS.items():
        text = text.replace(symbol, plain)
    decomposed = unicodedata.normalize("NFKD", text)
    return decomposed.encode("ascii", "ignore").decode("ascii")


# ---------------------------------------------------------------- banner content


@dataclass(frozen=True)
class Item:
    """One run of text in a row, optionally led by a colour swatch (the legend)."""

    text: str
    colour: RGB
    swatch: RGB | None = None


@dataclass(frozen=True)
class Row:
    """Items laid out left to right, wrapping as needed; ``big`` rows use the large font."""

    items: tuple[Item, ...]
    big: bool = False


def headline_rows(result: FieldResult) -> list[Row]:
    """The score and category in large text, or NOT SCORABLE and the reason."""
    if not result.scored:
        reason = result.reason or "no reason given"
        return [Row((Item("NOT SCORABLE", ALERT_COLOUR),), big=True),
                Row((Item(f"Reason: {reason}", TEXT_COLOUR),))]
    score = result.score.value if result.score else "?"
    category = result.category.value if result.category else "?"
    return [Row((Item(f"IHC {score}", TEXT_COLOUR), Item(category, TEXT_COLOUR)), big=True)]


def info_row(result: FieldResult) -> Row:
    """Tumour-cell count, scale and model."""
    if result.um_per_px is None:
        scale = f"um/px: unknown ({result.um_per_px_source})"
    else:
        scale = f"um/px: {result.um_per_px:.4g} ({result.um_per_px_source})"
    model = f"Model: {result.model.name} ({result.model.precision})"
    items = (f"Tumour cells: {result.tumour_cells}", scale, model)
    return Row(tuple(Item(t, TEXT_COLOUR) for t in items))


def legend_row(result: FieldResult) -> Row:
    """One swatch per membrane class with its percentage of tumour cells."""
    # A refused field may carry outlines but no percentages: then the legend names
    # the colours only, rather than showing a misleading 0.0% beside outlined cells.
    def label(c: MembraneClass) -> str:
        if not result.percent:
            return CLASS_LABELS[c]
        return f"{CLASS_LABELS[c]} {result.percent.get(c, 0.0):.1f}%"

    return Row(tuple(Item(label(c), TEXT_COLOUR, swatch=CLASS_COLOURS[c])
                     for c in MembraneClass))


def banner_rows(result: FieldResult) -> list[Row]:
    """What the banner says, row by row, before layout."""
    rows = [*headline_rows(result), info_row(result), legend_row(result)]
    rows += [Row((Item(f"Warning: {w}", ALERT_COLOUR),)) for w in result.warnings]
    if is_research_use_only(result.model):
        rows.append(Row((Item(RESEARCH_USE_LINE, ALERT_COLOUR),)))
    return rows


# ---------------------------------------------------------------- layout


def text_scale(width: int, height: int) -> float:
    """Text size relative to the 1280x720 design.

    The picture is fitted to the screen by its width or its height, whichever is
    tighter, so the text grows with both; the height counts only up to twice the
    width's share, so a tall narrow strip does not get letters wider than itself.
    Below MIN_LAYOUT_WIDTH the text stops shrinking and wraps instead.
    """
    by_width = width / REFERENCE_WIDTH
    by_height = min(height / REFERENCE_HEIGHT, 2 * by_width)
    return max(by_width, by_height, MIN_LAYOUT_WIDTH / REFERENCE_WIDTH)


@dataclass(frozen=True)
class Style:
    """Font sizes and spacing for one image size."""

    small_scale: float
    big_scale: float
    small_thick: int
    big_thick: int
    margin: int
    gap: int

    @staticmethod
    def for_size(width: int, height: int) -> Style:
        """The banner's style for an image of this size."""
        return Style.at_scale(text_scale(width, height))

    @staticmethod
    def at_scale(s: float, *, small: float = 0.8, big: float = 1.8, small_thick: float = 2.0,
                 big_thick: float = 4.0) -> Style:
        """Font scales and stroke widths of the 1280x720 design, times ``s``."""
        return Style(
            small_scale=small * s,
            big_scale=big * s,
            small_thick=max(1, round(small_thick * s)),
            big_thick=max(1, round(big_thick * s)),
            margin=max(2, round(16 * s)),
            gap=max(4, round(28 * s)),
        )

    def font(self, big: bool) -> Font:
        """(font face, scale, thickness) for a row."""
        if big:
            return _BIG_FONT, self.big_scale, self.big_thick
        return _SMALL_FONT, self.small_scale, self.small_thick


@dataclass(frozen=True)
class Glyphs:
    """One run of text (and its optional colour swatch) placed on a canvas."""

    text: str
    x: int
    baseline: int
    colour: RGB
    font: Font
    swatch: RGB | None
    swatch_side: int
    swatch_gap: int


def text_width(text: str, font: Font) -> int:
    """Width in pixels of ``text`` drawn in ``font``."""
    face, scale, thick = font
    (w, _), _ = cv2.getTextSize(text, face, scale, thick)
    return int(w)


def _split_long_word(word: str, font: Font, max_w: int) -> list[str]:
    parts: list[str] = []
    current = ""
    for ch in word:
        if current and text_width(current + ch, font) > max_w:
            parts.append(current)
            current = ""
        current += ch
    return [*parts, current] if current else parts


def wrap_text(text: str, font: Font, max_w: int) -> list[str]:
    """Greedy word wrap to ``max_w`` pixels; words wider than a line are split."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        pieces = [word] if text_width(word, font) <= max_w else _split_long_word(
            word, font, max_w)
        for piece in pieces:
            candidate = f"{current} {piece}" if current else piece
            if current and text_width(candidate, font) > max_w:
                lines.append(current)
                candidate = piece
            current = candidate
    return [*lines, current] if current else lines


def _row_font(row: Row, style: Style, usable: int) -> Font:
    """The row's font; big text shrinks (not below small text) until its words fit."""
    face, scale, thick = style.font(row.big)
    if not row.big:
        return face, scale, thick
    words = [w for item in row.items for w in ascii_text(item.text).split()]
    widest = max((text_width(w, (face, scale, thick)) for w in words), default=0)
    if widest > usable:
        scale = max(style.small_scale, scale * usable / widest)
        thick = max(style.small_thick, round(thick * usable / widest))
    return face, scale, thick


def line_metrics(font: Font) -> tuple[int, int]:
    """(line height, baseline offset from the line top) for a font."""
    face, scale, thick = font
    (_, h), base = cv2.getTextSize("Hg", face, scale, thick)
    return round(1.35 * (h + base)), round(0.2 * (h + base)) + h


def layout_rows(rows: Sequence[Row], style: Style,
                width: int) -> tuple[list[Glyphs], int]:
    """Place the rows' items left to right, wrapping at ``width``; (glyphs, banner height)."""
    usable = max(1, width - 2 * style.margin)
    glyphs: list[Glyphs] = []
    top = style.margin
    for row in rows:
        font = _row_font(row, style, usable)
        line_h, base_off = line_metrics(font)
        side, swatch_gap = (line_h * 6) // 10, style.gap // 3
        x = style.margin
        for item in row.items:
            indent = side + swatch_gap if item.swatch else 0
            lines = wrap_text(ascii_text(item.text), font, max(1, usable - indent))
            if not lines:
                continue
            first_w = indent + text_width(lines[0], font)
            if x > style.margin and (len(lines) > 1 or x + first_w > style.margin + usable):
                top, x = top + line_h, style.margin
            for n, line in enumerate(lines):
                if n:
                    top, x = top + line_h, style.margin
                glyphs.append(Glyphs(line, x + indent, top + base_off, item.colour, font,
                                     item.swatch if n == 0 else None, side, swatch_gap))
            x += indent + text_width(lines[-1], font) + style.gap
        top += line_h
    return glyphs, top + style.margin


def draw_glyphs(canvas: np.ndarray, glyphs: Sequence[Glyphs], *,
                background: RGB | None = BANNER_BG) -> None:
    """Draw laid-out text (and swatches) on ``canvas`` in place, over ``background``."""
    if background is not None:
        canvas[:] = np.asarray(background, dtype=np.uint8)
    for g in glyphs:
        face, scale, thick = g.font
        if g.swatch is not None:
            left = g.x - g.swatch_side - g.swatch_gap
            cv2.rectangle(canvas, (left, g.baseline - g.swatch_side),
                          (left + g.swatch_side, g.baseline), g.swatch, thickness=-1)
        # Anti-aliasing blurs one-pixel strokes into the background: crisp lines read
        # better on small pictures.
        line = cv2.LINE_AA if thick > 1 else cv2.LINE_8
        cv2.putText(canvas, g.text, (g.x, g.baseline), face, scale, g.colour, thick,
                    lineType=line)


# ---------------------------------------------------------------- cells


def check_rgb(image: np.ndarray, what: str = "overlay image", channels: int = 3) -> None:
    """Raise ValueError (naming ``what``) unless ``image`` is non-empty (H, W, channels) uint8."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != channels:
        kind = "RGB" if channels == 3 else "RGBA"
        raise ValueError(f"{what} must be (H, W, {channels}) uint8 {kind}, got {image.shape} "
                         f"{image.dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{what} is empty: {image.shape}")


def outline_thickness(width: int) -> int:
    """Outline width in pixels for a canvas ``width`` pixels wide."""
    # About two pixels on the 1280-px screen, whatever the image is scaled by to fit
    # it; one-pixel lines only where the image is too small for two.
    return max(2 if width >= 256 else 1, round(2 * width / REFERENCE_WIDTH))


def _marker_radius(cell: CellMeasurement, um_per_px: float | None, width: int) -> int:
    if um_per_px and cell.nucleus_area_um2 > 0:
        return max(2, round(math.sqrt(cell.nucleus_area_um2 / math.pi) / um_per_px))
    return max(2, round(6 * width / REFERENCE_WIDTH))


def _circle(centre: tuple[float, float], radius: int) -> np.ndarray:
    """A circle as a polygon whose points include the four axis ends (a multiple of 4)."""
    n = 4 * min(18, max(2, math.ceil(radius / 2)))
    angles = np.arange(n) * (2 * math.pi / n)
    pts = np.stack([centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)],
                   axis=1)
    return np.round(pts).astype(np.int32)


@dataclass(frozen=True)
class CellOutlines:
    """A result's cell outlines scaled to one canvas size, grouped by class colour.

    Scaling is done once per result and canvas; drawing is then one
    ``cv2.polylines`` call per class, cheap enough for every live frame.
    """

    width: int
    height: int
    thickness: int
    polygons: tuple[tuple[RGB, tuple[np.ndarray, ...]], ...]


def cell_outlines(result: FieldResult, width: int, height: int) -> CellOutlines:
    """Scale ``result``'s outlines (source-image pixels) to a ``width`` x ``height`` canvas.

    A cell without an outline gets a circle of its nucleus size. Raises ValueError
    naming the cell when a position is not finite.
    """
    fx, fy = width / max(1, result.image_width), height / max(1, result.image_height)
    um = result.um_per_px / fx if result.um_per_px else None
    by_colour: dict[RGB, list[np.ndarray]] = {CLASS_COLOURS[c]: [] for c in MembraneClass}
    for cell in result.cells:
        if not (math.isfinite(cell.x) and math.isfinite(cell.y)):
            raise ValueError(f"cell {cell.cell_id} has a non-finite position "
                             f"({cell.x}, {cell.y})")
        if cell.outline:
            pts = np.round(np.asarray(cell.outline, dtype=np.float64) * (fx, fy))
            poly = pts.astype(np.int32)
        else:
            poly = _circle((cell.x * fx, cell.y * fy), _marker_radius(cell, um, width))
        by_colour[CLASS_COLOURS[cell.membrane_class]].append(poly.reshape(-1, 1, 2))
    # Drawn class by class in MembraneClass order: where outlines of two classes touch,
    # the stronger pattern lies on top.
    polygons = tuple((colour, tuple(polys)) for colour, polys in by_colour.items() if polys)
    return CellOutlines(width, height, outline_thickness(width), polygons)


def draw_outlines(canvas: np.ndarray, outlines: CellOutlines,
                  colour: RGB | int | None = None) -> None:
    """Draw scaled outlines on ``canvas`` in place, in their class colours or ``colour``.

    ``colour`` paints every outline alike: an alpha plane gets 255 where outlines are.
    """
    for class_colour, polys in outlines.polygons:
        paint = class_colour if colour is None else colour
        # LINE_8, not anti-aliased: the outline keeps the exact class colour.
        cv2.polylines(canvas, list(polys), isClosed=True, color=paint,
                      thickness=outlines.thickness, lineType=cv2.LINE_8)


def draw_cells(canvas: np.ndarray, result: FieldResult) -> None:
    """Outline every cell of ``result`` on ``canvas`` (RGB, drawn in place).

    Outlines are in source-image pixels; a canvas of another size (a downscaled
    live frame) gets them scaled to fit.
    """
    h, w = canvas.shape[:2]
    draw_outlines(canvas, cell_outlines(result, w, h))


# ---------------------------------------------------------------- public


def render_overlay(image: np.ndarray, result: FieldResult) -> np.ndarray:
    """The picture the box shows: ``image`` with cell outlines and a banner below it.

    Returns a new RGB uint8 array, as wide as ``image`` and taller by the banner.
    """
    return with_banner(image, banner_rows(result), lambda canvas: draw_cells(canvas, result))


def with_banner(image: np.ndarray, rows: Sequence[Row],
                draw: Callable[[np.ndarray], None]) -> np.ndarray:
    """``image`` with ``draw`` applied to a copy of it and the ``rows`` as a banner below.

    Any assay's stored picture: ``draw`` paints its cells on the picture part in place.
    """
    check_rgb(image)
    h, w = image.shape[:2]
    style = Style.for_size(w, h)
    glyphs, banner_h = layout_rows(rows, style, w)
    # One allocation: the image and the banner are views of the output.
    out = np.empty((h + banner_h, w, 3), dtype=np.uint8)
    out[:h] = image
    draw(out[:h])
    draw_glyphs(out[h:], glyphs)
    return out


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write an RGB picture as PNG atomically (a temporary file, then os.replace).

    A reader never sees a half-written picture, even if the box loses power.
    """
    check_rgb(rgb)
    target = Path(path)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"cannot encode {target} as PNG ({rgb.shape[1]}x{rgb.shape[0]})")
    write_atomic(target, encoded.tobytes())
