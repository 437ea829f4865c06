"""A Levey-Jennings chart of a kit control's readings, as a picture (`appliance case
controls --chart`).

The lab looks at this chart, not at a table: the readings in run order against the
baseline's mean and its 1, 2 and 3 SD lines, a reading that breaks a rejection rule in
red and one beyond 2 SD (a warning) in amber. Readings measured without calibration
cannot be placed on the chart; the caption counts them. Drawn with OpenCV, which the
box has: no plotting library at run time.
"""

from __future__ import annotations

import itertools

import cv2
import numpy as np

from appliance.assays.hep2.control_trend import ControlTrend

WIDTH, HEIGHT = 960, 540
_LEFT, _RIGHT, _TOP, _BOTTOM = 110, 30, 70, 80
_BG, _GRID, _TEXT, _DIM = (255, 255, 255), (200, 200, 200), (20, 20, 20), (110, 110, 110)
_OK, _WARN, _REJECT = (30, 110, 200), (230, 150, 0), (210, 30, 30)  # RGB
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def render_chart(trend: ControlTrend, title: str) -> np.ndarray:
    """The chart as an RGB picture (WIDTH x HEIGHT)."""
    img = np.full((HEIGHT, WIDTH, 3), _BG, np.uint8)
    _text(img, title, (_LEFT, 32), 0.75, _TEXT, 2)
    placed = [(i, p.reading.units) for i, p in enumerate(trend.points)
              if p.reading.calibrated and p.reading.units is not None]
    skipped = len(trend.points) - len(placed)
    if trend.mean is not None and trend.sd is not None and trend.sd > 0:
        mean, sd = trend.mean, trend.sd
        worst = max([3.5] + [abs(p.z) + 0.5 for p in trend.points if p.z is not None])
        lo, hi = mean - worst * sd, mean + worst * sd
        caption = f"mean {mean:.1f}, SD {sd:.1f} units {trend.basis}"
    else:
        values = [u for _, u in placed] or [0.0, 1.0]
        pad = max(1.0, 0.1 * (max(values) - min(values)))
        lo, hi = min(values) - pad, max(values) + pad
        caption = trend.basis
    n = max(1, len(trend.points))

    def xy(i: int, units: float) -> tuple[int, int]:
        x = _LEFT + (i + 0.5) * (WIDTH - _LEFT - _RIGHT) / n
        y = _TOP + (hi - units) * (HEIGHT - _TOP - _BOTTOM) / (hi - lo)
        return round(x), round(y)

    if trend.mean is not None and trend.sd is not None and trend.sd > 0:
        for k in (-3, -2, -1, 0, 1, 2, 3):
            level = trend.mean + k * trend.sd
            y = xy(0, level)[1]
            colour = _REJECT if abs(k) == 3 else _WARN if abs(k) == 2 else _GRID
            cv2.line(img, (_LEFT, y), (WIDTH - _RIGHT, y), colour, 2 if k == 0 else 1)
            label = "mean" if k == 0 else f"{k:+d} SD"
            _text(img, f"{label} {level:.0f}", (8, y + 5), 0.45, _DIM, 1)
    cv2.rectangle(img, (_LEFT, _TOP), (WIDTH - _RIGHT, HEIGHT - _BOTTOM), _DIM, 1)
    points = [(i, u, trend.points[i]) for i, u in placed]
    for (i0, u0, _), (i1, u1, _) in itertools.pairwise(points):
        cv2.line(img, xy(i0, u0), xy(i1, u1), _DIM, 1, cv2.LINE_AA)
    for i, u, p in points:
        colour = _REJECT if p.rejected else _WARN if "1-2s" in p.rules else _OK
        cv2.circle(img, xy(i, u), 6, colour, -1, cv2.LINE_AA)
        if not p.reading.valid:
            cv2.circle(img, xy(i, u), 10, _REJECT, 2, cv2.LINE_AA)  # the check itself failed
    if trend.points:
        first, last = trend.points[0].reading.decided_at, trend.points[-1].reading.decided_at
        _text(img, first[:10], (_LEFT, HEIGHT - _BOTTOM + 22), 0.45, _DIM, 1)
        _text(img, last[:10], (WIDTH - _RIGHT - 95, HEIGHT - _BOTTOM + 22), 0.45, _DIM, 1)
    if skipped:
        caption += f"; {skipped} reading(s) without calibration not drawn"
    _text(img, caption, (_LEFT, HEIGHT - 30), 0.5, _TEXT, 1)
    _text(img, "blue: in control  amber: beyond 2 SD  red: a rejection rule  ring: check "
          "failed", (_LEFT, HEIGHT - 10), 0.45, _DIM, 1)
    return img


def _text(img: np.ndarray, text: str, at: tuple[int, int], scale: float,
          colour: tuple[int, int, int], thick: int) -> None:
    cv2.putText(img, text, at, _FONT, scale, colour, thick, cv2.LINE_AA)
