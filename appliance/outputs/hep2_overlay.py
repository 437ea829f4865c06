"""The HEp-2 picture: each cell outlined in its pattern's colour, metaphases marked, and a
banner with the specimen call (positive / negative, intensity, pattern(s) with ICAP codes).

It reuses the HER2 overlay's text layout (rows of coloured items, wrapped to the width)
so both assays read the same on the box's screen.
"""

from __future__ import annotations

import cv2
import numpy as np

from appliance.assays.hep2.patterns import NAMES, pattern
from appliance.assays.hep2.types import Hep2Result
from appliance.outputs.overlay import (
    ALERT_COLOUR,
    RESEARCH_USE_LINE,
    RGB,
    TEXT_COLOUR,
    CellOutlines,
    Item,
    Row,
    draw_outlines,
    outline_thickness,
    with_banner,
)
from appliance.outputs.result_json import is_research_use_only

# 17 classes need 17 distinguishable colours on a dark green picture: a fixed palette
# (no green shades close to FITC), negative in grey.
_PALETTE: tuple[RGB, ...] = (
    (150, 150, 150), (230, 159, 0), (86, 180, 233), (240, 228, 66), (0, 114, 178),
    (213, 94, 0), (204, 121, 167), (255, 255, 255), (255, 99, 71), (176, 122, 255),
    (255, 182, 193), (0, 206, 209), (255, 215, 0), (199, 21, 133), (135, 206, 250),
    (244, 164, 96), (218, 112, 214),
)
PATTERN_COLOURS: dict[str, RGB] = dict(zip(NAMES, _PALETTE, strict=True))
MITOSIS_COLOUR: RGB = (255, 0, 255)


def banner_rows(result: Hep2Result) -> list[Row]:
    """The banner under the picture, row by row."""
    rows = [*headline_rows(result), *measure_rows(result), *cell_rows(result),
            *warning_rows(result), *research_rows(result)]
    return [r for r in rows if r.items]


def headline_rows(result: Hep2Result) -> list[Row]:
    """The call in large letters: one row per pattern."""
    if not result.scored:
        return [Row((Item(f"NOT SCORABLE: {result.reason}", ALERT_COLOUR),), big=True)]
    if not result.positive:
        return [Row((Item(f"ANA NEGATIVE (AC-0)   intensity {result.intensity_units:.0f}",
                          TEXT_COLOUR),), big=True)]
    if not result.patterns:
        return [Row((Item("ANA POSITIVE - pattern not determinable here", TEXT_COLOUR),),
                    big=True)]
    first = result.patterns[0]
    rows = [Row((Item(f"ANA POSITIVE {first.icap} {first.label}", TEXT_COLOUR),), big=True)]
    for p in result.patterns[1:]:
        rows.append(Row((Item(f"+ {p.icap} {p.label} ({100 * p.share:.0f}% of cells)",
                              TEXT_COLOUR),), big=True))
    return rows


def live_headline_rows(result: Hep2Result) -> list[Row]:
    """The call for the live panel, which is narrow: the codes in large letters, then one
    ordinary row per pattern with its name and evidence."""
    if not (result.scored and result.positive and result.patterns):
        return headline_rows(result)
    codes = " + ".join(p.icap for p in result.patterns)
    rows = [Row((Item(f"ANA POSITIVE {codes}", TEXT_COLOUR),), big=True)]
    rows += [Row((Item(f"{p.icap} {p.label}" + (f": {p.evidence}" if p.evidence else ""),
                       TEXT_COLOUR),)) for p in result.patterns]
    return rows


def intensity_rows(result: Hep2Result) -> list[Row]:
    """The intensity of a positive field."""
    if not (result.scored and result.positive):
        return []
    units = "units" if result.intensity_calibrated else "relative units"
    return [Row((Item(f"Intensity {result.intensity_level}: {result.intensity_units:.0f}"
                      f" {units}", TEXT_COLOUR),))]


def measure_rows(result: Hep2Result) -> list[Row]:
    """The intensity and each pattern's evidence (a positive field's)."""
    if not (result.scored and result.positive):
        return []
    evidence = Row(tuple(Item(f"{p.icap}: {p.evidence}", TEXT_COLOUR)
                         for p in result.patterns if p.evidence))
    return [*intensity_rows(result), *([evidence] if evidence.items else [])]


def cell_rows(result: Hep2Result) -> list[Row]:
    """The cell counts and the colour legend of the outlines."""
    rows = [Row((Item(f"Cells: {len(result.cells)} ({result.cells_interphase} interphase, "
                      f"{result.cells_mitotic} metaphase)", TEXT_COLOUR),))]
    if result.cells:
        rows.append(legend_row(result))
    return [r for r in rows if r.items]


def warning_rows(result: Hep2Result) -> list[Row]:
    """The field's warnings."""
    return [Row((Item(f"Warning: {w}", ALERT_COLOUR),)) for w in result.warnings]


def research_rows(result: Hep2Result) -> list[Row]:
    """The research-use line, when the model is validated on generated data only."""
    return ([Row((Item(RESEARCH_USE_LINE, ALERT_COLOUR),))]
            if is_research_use_only(result.model) else [])


def cell_outlines(result: Hep2Result, width: int, height: int) -> CellOutlines:
    """The cells' outlines scaled to a ``width`` x ``height`` canvas, by pattern colour.

    A metaphase is outlined in magenta, whatever its pattern: the pathologist looks for
    them (they decide AC-1 against AC-4/AC-5).
    """
    fx, fy = width / max(1, result.image_width), height / max(1, result.image_height)
    by_colour: dict[RGB, list[np.ndarray]] = {}
    for cell in result.cells:
        if not cell.outline:
            continue
        colour = MITOSIS_COLOUR if cell.mitotic else PATTERN_COLOURS.get(cell.pattern,
                                                                         TEXT_COLOUR)
        pts = np.round(np.asarray(cell.outline, dtype=np.float64) * (fx, fy)).astype(np.int32)
        by_colour.setdefault(colour, []).append(pts.reshape(-1, 1, 2))
    polygons = tuple((c, tuple(p)) for c, p in by_colour.items())
    return CellOutlines(width, height, outline_thickness(width), polygons)


def legend_row(result: Hep2Result) -> Row:
    """One swatch per pattern present among the cells, with its count."""
    counts: dict[str, int] = {}
    for c in result.cells:
        counts[c.pattern] = counts.get(c.pattern, 0) + 1
    items = [Item(f"{pattern(n).icap} {n} {k}", TEXT_COLOUR, swatch=PATTERN_COLOURS[n])
             for n, k in sorted(counts.items(), key=lambda kv: -kv[1])[:6]]
    if result.cells_mitotic:
        items.append(Item(f"metaphase {result.cells_mitotic}", TEXT_COLOUR,
                          swatch=MITOSIS_COLOUR))
    return Row(tuple(items))


def draw_cells(canvas: np.ndarray, result: Hep2Result) -> None:
    """Outline every cell in its pattern's colour; a metaphase gets a magenta cross too."""
    h, w = canvas.shape[:2]
    thick = outline_thickness(w)
    draw_outlines(canvas, cell_outlines(result, w, h))
    for cell in result.cells:
        if cell.mitotic:
            r = max(4, w // 120)
            x, y = round(cell.x), round(cell.y)
            cv2.line(canvas, (x - r, y - r), (x + r, y + r), MITOSIS_COLOUR, thick)
            cv2.line(canvas, (x - r, y + r), (x + r, y - r), MITOSIS_COLOUR, thick)


def render_overlay(image: np.ndarray, result: Hep2Result) -> np.ndarray:
    """``image`` with the cells drawn and the banner below it (a new RGB uint8 array)."""
    return with_banner(image, banner_rows(result), lambda canvas: draw_cells(canvas, result))
