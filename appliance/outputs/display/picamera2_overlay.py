"""Annotations over picamera2's own preview (Raspberry Pi camera with the DRM preview).

picamera2 shows the camera picture itself, at camera rate and without a CPU copy;
``Picamera2.set_overlay(array)`` lays an RGBA uint8 picture over it (the last
channel is alpha; ``None`` removes it). The preview stretches the overlay onto the
rectangle where it shows the camera picture, so the overlay should have the
picture's aspect ratio, and only annotations go in it (outlines and panel,
transparent elsewhere): see :meth:`LiveComposer.annotations`.

picamera2's ``set_overlay`` refuses anything but a 3-dimensional 4-channel array
(RuntimeError), and the DRM preview refuses an overlay before the preview is
started and configured with at least two buffers. Each call copies the whole
overlay into a new DRM framebuffer (5 MB at 1280x960), so the sink paces them:

* an overlay whose alpha plane changed (outlines appear or go, NO PICTURE) is sent
  at once, because outlines from an old field must not stay over a new one;
* a change in colour only (the panel's text, the rates) waits until ``min_interval_s``
  has passed since the last one sent;
* an unchanged overlay is not sent again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from appliance.outputs.display.sinks import DisplayError, ErrorTally, SinkBase, check_rgb

_log = logging.getLogger(__name__)


class Picamera2OverlaySink(SinkBase):
    """Sends RGBA annotations to ``picam2.set_overlay``; errors are counted, never raised.

    ``size``: the overlay's (width, height), None for the camera frame's own.
    ``min_interval_s``: the shortest time between two overlays that differ only in
    colour (see the module notes). Thread: picamera2 serialises ``set_overlay`` with
    its preview itself, so any one thread may call ``show``.
    """

    def __init__(self, picam2: Any, *, size: tuple[int, int] | None = None,
                 min_interval_s: float = 0.2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not callable(getattr(picam2, "set_overlay", None)):
            raise DisplayError(f"picamera2 overlay: {type(picam2).__name__} has no "
                               f"set_overlay(); pass the Picamera2 camera object")
        self._picam2 = picam2
        self._size = size
        self._interval = float(min_interval_s)
        self._clock = clock
        self._last_sent: np.ndarray | None = None
        self._last_time: float | None = None
        self.errors = ErrorTally("picamera2 overlay")
        self.sent = 0
        self.skipped = 0
        self.closed = False

    @property
    def size(self) -> tuple[int, int] | None:
        return self._size

    @property
    def annotations_only(self) -> bool:
        return True

    @property
    def wants_quit(self) -> bool:
        return False

    def show(self, picture: np.ndarray) -> None:
        """Lay the RGBA ``picture`` over the preview, unless it is unchanged or too soon."""
        if self.closed:
            raise DisplayError("picamera2 overlay: show() after close()")
        check_rgb(picture, channels=4)
        now = self._clock()
        if not self._due(picture, now):
            self.skipped += 1
            return
        if self._send(np.ascontiguousarray(picture)):
            self._last_sent, self._last_time = picture, now
            self.sent += 1

    def _due(self, picture: np.ndarray, now: float) -> bool:
        last = self._last_sent
        if last is None or last.shape != picture.shape:
            return True
        if not np.array_equal(picture[..., 3], last[..., 3]):
            return True  # outlines came or went: at once
        if self._last_time is not None and now - self._last_time < self._interval:
            return False
        return not np.array_equal(picture, last)

    def _send(self, overlay: np.ndarray | None) -> bool:
        try:
            self._picam2.set_overlay(overlay)
        # picamera2 raises RuntimeError for a preview not ready, and the DRM calls
        # below it other errors; none of them may stop scoring.
        except Exception as exc:
            self.errors.record(type(exc).__name__, f"set_overlay failed: {exc}")
            return False
        return True

    def close(self) -> None:
        """Remove the overlay from the preview; further calls do nothing."""
        if self.closed:
            return
        self.closed = True
        if self._last_sent is not None:
            self._send(None)
        self._last_sent = None
