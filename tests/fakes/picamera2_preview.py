"""A stand-in for a Picamera2 camera with its DRM preview, as far as overlays go.

It checks what the real stack checks, in the same order and with the same errors
(picamera2 ``Picamera2.set_overlay`` then ``DrmPreview.set_overlay``):

* the overlay must be None or a 3-dimensional array with 4 channels (RGBA), else
  RuntimeError("Overlay must be a 4-channel image");
* the preview must be started and configured with at least 2 buffers, else
  RuntimeError;
* the DRM preview copies the array's raw bytes into a W x H x 4-byte framebuffer
  (format AB24: bytes R, G, B, A), so an array of wider elements than uint8 does
  not fit: ValueError("data out of range"), as mmap.write raises.

Like the real one it copies the overlay at the call, so the caller may reuse its array.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class FakePicamera2:
    """Records every overlay it accepts (None when the overlay is removed)."""

    def __init__(self, *, started: bool = True, configured: bool = True,
                 buffer_count: int = 4) -> None:
        self.preview_started = started
        self.camera_config: dict[str, Any] | None = (
            {"buffer_count": buffer_count} if configured else None)
        self.overlays: list[np.ndarray | None] = []

    def set_overlay(self, overlay: np.ndarray | None) -> None:
        """Accept an RGBA overlay (or None), checking it as picamera2 does."""
        if overlay is not None and (overlay.ndim != 3 or overlay.shape[2] != 4):
            raise RuntimeError("Overlay must be a 4-channel image")
        if not self.preview_started:
            raise RuntimeError("Preview must be started before setting an overlay")
        if self.camera_config is None:
            raise RuntimeError("Preview must be configured before setting an overlay")
        if self.camera_config["buffer_count"] < 2:
            raise RuntimeError("Need at least buffer_count=2 to set overlay")
        if overlay is None:
            self.overlays.append(None)
            return
        h, w, _ = overlay.shape
        raw = np.ascontiguousarray(overlay).tobytes()
        if len(raw) > w * h * 4:
            raise ValueError("data out of range")
        framebuffer = bytearray(w * h * 4)
        framebuffer[:len(raw)] = raw
        self.overlays.append(np.frombuffer(bytes(framebuffer), dtype=np.uint8).reshape(h, w, 4))

    @property
    def current(self) -> np.ndarray | None:
        """The overlay on screen now."""
        return self.overlays[-1] if self.overlays else None
