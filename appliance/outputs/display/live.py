"""The live picture: the camera frame, the latest result's outlines and an information panel.

This runs for every displayed frame (up to 30 a second on a 2-core CPU), so what
changes rarely is cached: the panel is rendered once per (result, status without
the rates) and only the rate figures are drawn per frame; cell outlines are scaled
once per (result, fitted frame size) and drawn with one ``cv2.polylines`` per class.

Outlines are drawn only over the field they were computed on: the caller says so
with :attr:`LiveStatus.result_in_view`, and they are drawn only while the stage is
still (``stage == "stable"``); outlines from an old field over a new one would point
at cells that are not there.

Two products share the drawing: :meth:`LiveComposer.compose` (an RGB picture for a
screen or a file: frame letterboxed beside the panel) and
:meth:`LiveComposer.annotations` (an RGBA overlay for a preview that shows the camera
picture itself, such as picamera2's DRM preview: transparent except outlines and panel).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Generic, TypeVar

import cv2
import numpy as np

from appliance.assays.hep2.types import Hep2Result
from appliance.assays.her2.types import FieldResult
from appliance.assays.results import AnyResult
from appliance.outputs import hep2_overlay
from appliance.outputs.overlay import (
    ALERT_COLOUR,
    BANNER_BG,
    RESEARCH_USE_LINE,
    RGB,
    TEXT_COLOUR,
    CellOutlines,
    Font,
    Glyphs,
    Item,
    Row,
    Style,
    ascii_text,
    cell_outlines,
    check_rgb,
    draw_glyphs,
    draw_outlines,
    headline_rows,
    layout_rows,
    legend_row,
    line_metrics,
    text_scale,
    text_width,
    wrap_text,
)
from appliance.outputs.result_json import is_research_use_only

SOURCE_STATES = ("opening", "streaming", "fault", "ended", "closed")
STAGES = ("moving", "settling", "stable", "blurred")

PANEL_BG: RGB = BANNER_BG
NO_PICTURE_BG: RGB = (16, 16, 16)
DIM_COLOUR: RGB = (170, 170, 170)  # hints and rates: readable, quieter than results
REPORTED_COLOUR: RGB = (110, 220, 140)
PANEL_ALPHA = 180  # annotations: the panel mostly hides the picture under it
DEFAULT_SIZE = (1280, 720)  # picture area when neither size nor frame is known
MIN_SIZE = (64, 48)

# Side panel width at the 1280x720 design: a 4:3 camera picture then fills the rest
# of a 16:9 screen at full height (960 + 320 = 1280).
PANEL_WIDTH = 320
_PANEL_STYLE = {"small": 0.62, "big": 1.05, "small_thick": 1.6, "big_thick": 2.4}
_NO_PICTURE_SCALE = 1.5
_DEFAULT_REASONS = {
    "opening": "camera starting",
    "fault": "camera fault",
    "ended": "end of the recording",
    "closed": "camera closed",
    "streaming": "waiting for the first frame",
}

Rect = tuple[int, int, int, int]  # x, y, width, height


@dataclass(frozen=True)
class LiveCase:
    """The open case as the panel shows it, beside the field's own score."""

    case_id: str
    mode: str  # tumour | control (a control check in progress)
    control: str  # valid | failed | not_checked | checking (HEp-2 also: incomplete)
    control_expected: str | None
    calibration: str  # in words
    score: str | None  # the running pooled case score
    category: str | None
    fields_counted: int
    tumour_cells: int  # HEp-2: the interphase cells pooled
    flags: int  # heterogeneity + borderline lines (HEp-2: fields unlike the well): "look again"
    assay: str = "her2"  # a HEp-2 case: score is the well's call in words, no calibration
    dilution: int | None = None  # HEp-2 titration: the dilution of the well shown now
    on_slide: bool = False  # HEp-2: the case shares its slide's kit controls


@dataclass(frozen=True)
class LiveStatus:
    """What the box knows about the live view besides the picture and the result."""

    source_state: str  # "opening" | "streaming" | "fault" | "ended" | "closed"
    source_reason: str  # why there is no picture ("" when streaming)
    stage: str  # "moving" | "settling" | "stable" | "blurred" (from the stability tracker)
    reported: bool  # the field in view has been stored/reported
    result_in_view: bool  # the latest result was computed on the field now in view
    capture_fps: float
    processed_fps: float
    latency_ms: float | None  # capture -> result, p50
    case: LiveCase | None = None  # the open case, if any

    def __post_init__(self) -> None:
        if self.source_state not in SOURCE_STATES:
            raise ValueError(f"live status: source_state {self.source_state!r} is not one of "
                             f"{SOURCE_STATES}")
        if self.stage not in STAGES:
            raise ValueError(f"live status: stage {self.stage!r} is not one of {STAGES}")
        for name in ("capture_fps", "processed_fps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"live status: {name} must be a finite number >= 0, "
                                 f"got {value!r}")
        if self.latency_ms is not None and not (math.isfinite(self.latency_ms)
                                                and self.latency_ms >= 0):
            raise ValueError(f"live status: latency_ms must be None or a finite number >= 0, "
                             f"got {self.latency_ms!r}")

    @property
    def streaming(self) -> bool:
        """The source delivers pictures."""
        return self.source_state == "streaming"

    def without_rates(self) -> LiveStatus:
        """This status with the per-frame figures zeroed: the key of the cached panel."""
        return replace(self, capture_fps=0.0, processed_fps=0.0, latency_ms=None)


# ---------------------------------------------------------------- geometry


@dataclass(frozen=True)
class LiveLayout:
    """Where things go on a live picture of ``size``."""

    size: tuple[int, int]  # (width, height) of the whole picture
    area: Rect  # the picture area (frame and letterbox bars, or the NO PICTURE screen)
    frame: Rect  # the fitted frame inside ``area``
    panel: Rect
    side: bool  # panel at the right (landscape) or below (portrait)
    style: Style


def fit_rect(src: tuple[int, int], area: Rect) -> Rect:
    """The largest rectangle of ``src``'s aspect ratio centred in ``area`` (letterbox)."""
    ax, ay, aw, ah = area
    sw, sh = src
    scale = min(aw / sw, ah / sh)
    w, h = max(1, min(aw, round(sw * scale))), max(1, min(ah, round(sh * scale)))
    return ax + (aw - w) // 2, ay + (ah - h) // 2, w, h


def _panel_style(s: float) -> Style:
    return Style.at_scale(s, **_PANEL_STYLE)


def _bottom_panel_height(style: Style) -> int:
    """A fixed height (so the frame does not jump as the text changes): 2 large and 6
    small lines (stage, score, reason, research use, cells, legend, rates)."""
    big_h, _ = line_metrics(style.font(True))
    small_h, _ = line_metrics(style.font(False))
    return 2 * big_h + 6 * small_h + 2 * style.margin


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    w, h = int(size[0]), int(size[1])
    if w < MIN_SIZE[0] or h < MIN_SIZE[1]:
        raise ValueError(f"live picture size {w}x{h} is below the minimum "
                         f"{MIN_SIZE[0]}x{MIN_SIZE[1]}")
    return w, h


@lru_cache(maxsize=32)
def live_layout(frame_size: tuple[int, int] | None, size: tuple[int, int] | None, *,
                over_picture: bool = False) -> LiveLayout:
    """The layout of a live picture.

    ``size`` None: the frame's size plus a side panel. A landscape ``size`` gets the
    panel at the right, a portrait one below. ``over_picture``: the panel lies over
    the picture (annotations for a preview that shows the picture itself), and the
    frame fills the whole ``size``.
    """
    if size is None:
        fw, fh = _check_size(frame_size or DEFAULT_SIZE)
        s = text_scale(fw, fh)
        pw = round(PANEL_WIDTH * s)
        size = (fw if over_picture else fw + pw, fh)
    w, h = _check_size(size)
    s = text_scale(w, h)
    style = _panel_style(s)
    side = w >= h
    # The panel gets at least its design size, and whatever the frame, fitted to the
    # full height (side) or width (below), leaves over: no letterbox bar is wasted.
    fw, fh = frame_size if frame_size is not None and not over_picture else (w, h)
    if side:
        pw = min(w - 16, max(round(PANEL_WIDTH * s), w - round(h * fw / fh)))
        panel: Rect = (w - pw, 0, pw, h)
        area: Rect = (0, 0, w, h) if over_picture else (0, 0, w - pw, h)
    else:
        ph = min(h - 16, max(_bottom_panel_height(style), h - round(w * fh / fw)))
        panel = (0, h - ph, w, ph)
        area = (0, 0, w, h) if over_picture else (0, 0, w, h - ph)
    frame = area if frame_size is None or over_picture else fit_rect(frame_size, area)
    return LiveLayout((w, h), area, frame, panel, side, style)


# ---------------------------------------------------------------- panel content


def stage_line(status: LiveStatus) -> tuple[str, RGB, bool]:
    """(words, colour, tick) of the panel's top line; tick: draw a check mark after it."""
    if not status.streaming:
        words = {"opening": "Camera starting", "fault": "No picture", "ended": "Source ended",
                 "closed": "Camera closed"}[status.source_state]
        return words, (ALERT_COLOUR if status.source_state == "fault" else TEXT_COLOUR), False
    if status.stage == "moving":
        return "Moving stage", DIM_COLOUR, False
    if status.stage == "settling":
        return "Hold still...", TEXT_COLOUR, False
    if status.stage == "blurred":
        return "Out of focus", ALERT_COLOUR, False
    if status.reported:
        return "Reported", REPORTED_COLOUR, True
    return "Scoring", TEXT_COLOUR, False


def _shows_result(result: AnyResult | None, status: LiveStatus) -> bool:
    return result is not None and status.streaming and status.result_in_view


def panel_rows(result: AnyResult | None, status: LiveStatus) -> list[Row]:
    """The panel's text below the stage line, row by row, before layout."""
    rows: list[Row] = []
    if isinstance(result, Hep2Result) and _shows_result(result, status):
        # The side panel is short and rows that do not fit are left out from the end:
        # what the model was validated on and the open case (its kit controls) come
        # before the field's details.
        rows = [*hep2_overlay.live_headline_rows(result), *hep2_overlay.research_rows(result),
                *(case_rows(status.case) if status.case is not None else []),
                *hep2_overlay.intensity_rows(result), *hep2_overlay.warning_rows(result),
                *hep2_overlay.cell_rows(result)]
        return [r for r in rows if r.items]
    if isinstance(result, FieldResult) and _shows_result(result, status):
        rows += headline_rows(result)
    elif status.streaming:
        rows.append(Row((Item("No result for this field yet", DIM_COLOUR),)))
    if result is not None and is_research_use_only(result.model):
        rows.append(Row((Item(RESEARCH_USE_LINE, ALERT_COLOUR),)))
    if isinstance(result, FieldResult) and _shows_result(result, status):
        rows.append(Row((Item(f"Tumour cells: {result.tumour_cells}", TEXT_COLOUR),)))
        rows.append(legend_row(result))
        rows += [Row((Item(f"Warning: {w}", ALERT_COLOUR),)) for w in result.warnings]
    if status.case is not None:
        rows += case_rows(status.case)
    return rows


def case_rows(case: LiveCase) -> list[Row]:
    """The running case score and its control, below the field's own result."""
    if case.assay == "hep2":
        return hep2_case_rows(case)
    if case.score is not None:
        score = f"Case score {case.score} {case.category or ''}".rstrip()
    else:
        score = "Case score: not yet (too few tumour cells)"
    rows = [Row((Item(f"Case {case.case_id}", DIM_COLOUR),)),
            Row((Item(f"{score} - {case.fields_counted} fields, {case.tumour_cells} cells",
                      TEXT_COLOUR),))]
    if case.mode == "control":
        rows.append(Row((Item(f"CONTROL CHECK ({case.control_expected}): show the control "
                              "tissue", ALERT_COLOUR),)))
    elif case.control == "valid":
        rows.append(Row((Item(f"Control valid; {case.calibration}", DIM_COLOUR),)))
    elif case.control == "failed":
        rows.append(Row((Item("CONTROL FAILED: scores not valid", ALERT_COLOUR),)))
    else:
        rows.append(Row((Item("CONTROL NOT CHECKED: scores not validated", ALERT_COLOUR),)))
    if case.flags:
        rows.append(Row((Item(f"{case.flags} flag(s): heterogeneous or borderline, look again",
                              ALERT_COLOUR),)))
    return rows


def hep2_case_rows(case: LiveCase) -> list[Row]:
    """A HEp-2 case: the well's running call from its fields so far, and the kit controls."""
    call = case.score or "not yet (no field scored)"
    now = f" (showing 1:{case.dilution})" if case.dilution is not None else ""
    rows = [Row((Item(f"Case {case.case_id}{now}: {call} ({case.fields_counted} fields, "
                      f"{case.tumour_cells} cells)", TEXT_COLOUR),))]
    if case.mode == "control":
        rows.append(Row((Item(f"KIT CONTROL ({case.control_expected}): show the control well",
                              ALERT_COLOUR),)))
    elif case.control == "valid":
        slide = " on this slide" if case.on_slide else ""
        rows.append(Row((Item(f"Kit controls valid{slide}", DIM_COLOUR),)))
    elif case.control == "failed":
        rows.append(Row((Item("KIT CONTROL FAILED: call not valid", ALERT_COLOUR),)))
    else:
        slide = " ON THIS SLIDE" if case.on_slide else ""
        what = ("ONE KIT CONTROL" if case.control == "incomplete" else "KIT CONTROLS")
        rows.append(Row((Item(f"{what} NOT CHECKED{slide}: call not validated",
                              ALERT_COLOUR),)))
    if case.flags:
        rows.append(Row((Item(f"{case.flags} field(s) unlike the well: another well's?",
                              ALERT_COLOUR),)))
    return rows


def rate_lines(status: LiveStatus, one_line: bool) -> list[str]:
    """Capture and processing rates and latency, as the panel's last line(s)."""
    latency = "--" if status.latency_ms is None else f"{status.latency_ms:.0f} ms"
    parts = [f"Camera {status.capture_fps:.1f} fps", f"Scored {status.processed_fps:.1f} fps",
             f"Latency {latency}"]
    return ["   ".join(parts)] if one_line else parts


def _fit_font(text: str, font: Font, width: int) -> Font:
    """``font`` shrunk (never grown) until ``text`` fits ``width`` pixels."""
    face, scale, thick = font
    w = text_width(text, font)
    if w <= width:
        return font
    return face, scale * width / w, max(1, round(thick * width / w))


def _draw_tick(canvas: np.ndarray, x: int, baseline: int, cap: int, colour: RGB,
               thick: int) -> None:
    # A drawn check mark: cv2's Hershey fonts have no "✓".
    pts = np.array([(x, baseline - cap * 45 // 100), (x + cap * 35 // 100, baseline),
                    (x + cap, baseline - cap)], dtype=np.int32).reshape(-1, 1, 2)
    cv2.polylines(canvas, [pts], isClosed=False, color=colour, thickness=thick,
                  lineType=cv2.LINE_AA)


def _draw_stage_line(panel: np.ndarray, status: LiveStatus, style: Style) -> int:
    """Draw the stage in large text at the top of ``panel``; returns the line's bottom."""
    words, colour, tick = stage_line(status)
    usable = max(1, panel.shape[1] - 2 * style.margin)
    big = style.font(True)
    (_, cap), _ = cv2.getTextSize("H", big[0], big[1], big[2])
    face, scale, thick = _fit_font(words, big, usable - (cap + style.gap // 2 if tick else 0))
    (tw, th), _ = cv2.getTextSize(words, face, scale, thick)
    line_h, base_off = line_metrics((face, scale, thick))
    baseline = style.margin + base_off
    cv2.putText(panel, words, (style.margin, baseline), face, scale, colour, thick,
                lineType=cv2.LINE_AA)
    if tick:
        _draw_tick(panel, style.margin + tw + style.gap // 2, baseline, th, colour, thick)
    return style.margin + line_h


def _rates_height(style: Style, lines: int) -> int:
    small_h, _ = line_metrics(style.font(False))
    return lines * small_h + style.margin


def render_panel(result: AnyResult | None, status: LiveStatus, layout: LiveLayout) -> np.ndarray:
    """The panel without the rate figures (those change every frame): RGB uint8."""
    _, _, pw, ph = layout.panel
    style = layout.style
    panel = np.empty((ph, pw, 3), dtype=np.uint8)
    panel[:] = np.asarray(PANEL_BG, dtype=np.uint8)
    top = _draw_stage_line(panel, status, style)
    content_h = max(0, ph - top - _rates_height(style, 3 if layout.side else 1))
    fitting = fitting_rows(panel_rows(result, status), style, pw, content_h)
    draw_glyphs(panel[top:top + content_h], fitting, background=None)
    return panel


def fitting_rows(rows: Sequence[Row], style: Style, width: int, height: int) -> list[Glyphs]:
    """The laid-out text of the first rows that fit whole in ``width`` x ``height``.

    Rows that do not fit are left out from the end, never cut (a warning cut after its
    first words would say something else); the rates block keeps its place below. The
    rows are few, so laying them out again for each one is cheap.
    """
    fitting: list[Glyphs] = []
    for k in range(1, len(rows) + 1):
        glyphs, _ = layout_rows(rows[:k], style, width)
        if any(_line_bottom(g) > height for g in glyphs):
            break
        fitting = glyphs
    return fitting


def _line_bottom(g: Glyphs) -> int:
    line_h, base_off = line_metrics(g.font)
    return g.baseline - base_off + line_h


def draw_rates(panel: np.ndarray, status: LiveStatus, layout: LiveLayout) -> None:
    """Draw the rates and latency at the bottom of the RGB ``panel`` in place."""
    style = layout.style
    lines = rate_lines(status, one_line=not layout.side)
    font = style.font(False)
    line_h, base_off = line_metrics(font)
    usable = max(1, panel.shape[1] - 2 * style.margin)
    top = panel.shape[0] - _rates_height(style, len(lines))
    for i, text in enumerate(lines):
        face, scale, thick = _fit_font(text, font, usable)
        cv2.putText(panel, text, (style.margin, top + i * line_h + base_off), face, scale,
                    DIM_COLOUR, thick, lineType=cv2.LINE_AA)


def render_no_picture(reason: str, width: int, height: int) -> np.ndarray:
    """A dark area with ``NO PICTURE: <reason>`` in large letters, centred; RGB uint8."""
    area = np.empty((height, width, 3), dtype=np.uint8)
    area[:] = np.asarray(NO_PICTURE_BG, dtype=np.uint8)
    s = text_scale(width, height)
    style = Style.at_scale(s, big=_NO_PICTURE_SCALE, big_thick=3.0)
    font = style.font(True)
    usable = max(1, width - 2 * style.margin)
    lines = wrap_text(ascii_text(f"NO PICTURE: {reason}"), font, usable)
    line_h, base_off = line_metrics(font)
    top = max(style.margin, (height - line_h * len(lines)) // 2)
    for i, line in enumerate(lines):
        face, scale, thick = _fit_font(line, font, usable)
        x = max(style.margin, (width - text_width(line, (face, scale, thick))) // 2)
        cv2.putText(area, line, (x, top + i * line_h + base_off), face, scale, ALERT_COLOUR,
                    thick, lineType=cv2.LINE_AA)
    return area


# ---------------------------------------------------------------- composer

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class _Lru(Generic[_K, _V]):
    """A small least-recently-used cache."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[_K, _V] = OrderedDict()

    def get(self, key: _K) -> _V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: _K, value: _V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)


def _draws_cells(result: AnyResult | None, status: LiveStatus, show_cells: bool) -> bool:
    # Only the field the result was computed on, and only while it holds still.
    return show_cells and _shows_result(result, status) and status.stage == "stable"


def _no_picture_reason(status: LiveStatus) -> str:
    return status.source_reason or _DEFAULT_REASONS[status.source_state]


class LiveComposer:
    """Composes live pictures, caching the panel and the scaled outlines.

    One composer per display thread: it is not thread-safe. The caches hold the
    result objects they were made from (so an ``id`` is never reused while cached)
    and are small: a few results and statuses.
    """

    def __init__(self, cache_size: int = 8) -> None:
        self._panels: _Lru[tuple[int, LiveStatus, LiveLayout], tuple[object, np.ndarray]] = (
            _Lru(cache_size))
        self._outlines: _Lru[tuple[int, int, int], tuple[object, CellOutlines]] = _Lru(4)
        self._no_picture: _Lru[tuple[str, int, int], np.ndarray] = _Lru(4)
        self._annotations: _Lru[tuple[int, LiveStatus, LiveLayout, bool],
                                tuple[object, np.ndarray]] = _Lru(4)

    def compose(self, frame: np.ndarray | None, result: AnyResult | None,
                status: LiveStatus, *, size: tuple[int, int] | None,
                show_cells: bool = True) -> np.ndarray:
        """The live picture: RGB uint8 of ``size`` (None: the frame's size plus the panel)."""
        if frame is not None:
            check_rgb(frame, "live frame")
        frame_size = None if frame is None else (frame.shape[1], frame.shape[0])
        layout = live_layout(frame_size, None if size is None else _check_size(size))
        w, h = layout.size
        out = np.zeros((h, w, 3), dtype=np.uint8)  # letterbox bars stay black
        if frame is None or not status.streaming:
            ax, ay, aw, ah = layout.area
            out[ay:ay + ah, ax:ax + aw] = self._no_picture_area(_no_picture_reason(status),
                                                                aw, ah)
        else:
            fx, fy, fw, fh = layout.frame
            view = out[fy:fy + fh, fx:fx + fw]
            _place_frame(frame, view)
            if result is not None and _draws_cells(result, status, show_cells):
                draw_outlines(view, self._scaled_outlines(result, fw, fh))
        self._place_panel(out, result, status, layout)
        return out

    def annotations(self, result: AnyResult | None, status: LiveStatus, *,
                    size: tuple[int, int], show_cells: bool = True) -> np.ndarray:
        """Outlines and panel only, for a preview that shows the picture: RGBA uint8.

        ``size`` is the overlay's (width, height); give it the camera picture's aspect
        ratio, as the preview stretches the overlay onto the picture. Transparent
        (alpha 0) where nothing is drawn; the panel is PANEL_ALPHA, outlines opaque.
        """
        w, h = _check_size(size)
        layout = live_layout(None, (w, h), over_picture=True)
        cells = _draws_cells(result, status, show_cells)
        key = (id(result), status.without_rates(), layout, cells)
        hit = self._annotations.get(key)
        if hit is not None and hit[0] is result:
            base = hit[1]
        else:
            base = self._render_annotations(result, status, layout, cells)
            self._annotations.put(key, (result, base))
        out = base.copy()
        px, py, pw, ph = layout.panel
        # Drawn on the colour channels only (cv2 blends a 4th channel as a colour): a
        # change of rates alone leaves the alpha plane as it was, which
        # Picamera2OverlaySink relies on to pace its uploads.
        panel = np.ascontiguousarray(out[py:py + ph, px:px + pw, :3])
        draw_rates(panel, status, layout)
        out[py:py + ph, px:px + pw, :3] = panel
        return out

    def _render_annotations(self, result: AnyResult | None, status: LiveStatus,
                            layout: LiveLayout, cells: bool) -> np.ndarray:
        w, h = layout.size
        rgb = np.zeros((h, w, 3), dtype=np.uint8)
        alpha = np.zeros((h, w), dtype=np.uint8)
        if not status.streaming:
            ax, ay, aw, ah = layout.area
            rgb[ay:ay + ah, ax:ax + aw] = self._no_picture_area(_no_picture_reason(status),
                                                                aw, ah)
            alpha[ay:ay + ah, ax:ax + aw] = 255  # hide a stale picture completely
        elif result is not None and cells:
            outlines = self._scaled_outlines(result, w, h)
            draw_outlines(rgb, outlines)
            draw_outlines(alpha, outlines, colour=255)
        px, py, pw, ph = layout.panel
        rgb[py:py + ph, px:px + pw] = self._panel(result, status, layout)
        alpha[py:py + ph, px:px + pw] = PANEL_ALPHA
        return np.dstack((rgb, alpha))

    # ------------------------------------------------------------ cached parts

    def _place_panel(self, out: np.ndarray, result: AnyResult | None, status: LiveStatus,
                     layout: LiveLayout) -> None:
        px, py, pw, ph = layout.panel
        view = out[py:py + ph, px:px + pw]
        view[:] = self._panel(result, status, layout)
        draw_rates(view, status, layout)

    def _panel(self, result: AnyResult | None, status: LiveStatus,
               layout: LiveLayout) -> np.ndarray:
        key = (id(result), status.without_rates(), layout)
        hit = self._panels.get(key)
        if hit is not None and hit[0] is result:
            return hit[1]
        panel = render_panel(result, status, layout)
        self._panels.put(key, (result, panel))
        return panel

    def _scaled_outlines(self, result: AnyResult, width: int, height: int) -> CellOutlines:
        key = (id(result), width, height)
        hit = self._outlines.get(key)
        if hit is not None and hit[0] is result:
            return hit[1]
        outlines = (hep2_overlay.cell_outlines(result, width, height)
                    if isinstance(result, Hep2Result) else cell_outlines(result, width, height))
        self._outlines.put(key, (result, outlines))
        return outlines

    def _no_picture_area(self, reason: str, width: int, height: int) -> np.ndarray:
        key = (reason, width, height)
        area = self._no_picture.get(key)
        if area is None:
            area = render_no_picture(reason, width, height)
            self._no_picture.put(key, area)
        return area


def _place_frame(frame: np.ndarray, view: np.ndarray) -> None:
    """Copy ``frame`` into ``view``, resized to it."""
    h, w = view.shape[:2]
    if frame.shape[:2] == (h, w):
        view[:] = frame
        return
    # Area averaging only for strong reductions, where bilinear would alias; it costs
    # several times more and 1280x960 -> 960x720 looks the same either way.
    shrink = frame.shape[1] / w
    interp = cv2.INTER_AREA if shrink > 2 else cv2.INTER_LINEAR
    view[:] = cv2.resize(frame, (w, h), interpolation=interp)


_shared = LiveComposer()
_shared_lock = threading.Lock()


def compose_live(frame: np.ndarray | None, result: AnyResult | None, status: LiveStatus, *,
                 size: tuple[int, int] | None, show_cells: bool = True) -> np.ndarray:
    """The live picture through a shared :class:`LiveComposer` (see its ``compose``).

    ``frame`` None or a source not streaming: the NO PICTURE screen instead of the frame.
    """
    with _shared_lock:
        return _shared.compose(frame, result, status, size=size, show_cells=show_cells)


def compose_annotations(result: AnyResult | None, status: LiveStatus, *,
                        size: tuple[int, int], show_cells: bool = True) -> np.ndarray:
    """The RGBA annotations through a shared :class:`LiveComposer` (see ``annotations``)."""
    with _shared_lock:
        return _shared.annotations(result, status, size=size, show_cells=show_cells)
