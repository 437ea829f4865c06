"""Raspberry Pi camera modules through picamera2 (``picamera2[:CAMERA_INDEX]``).

picamera2 is imported only when the source is opened, so the rest of the appliance
runs where it is not installed. Its ``"RGB888"`` format is named after libcamera's
little-endian pixel word: in memory each pixel is B, G, R, which is why
``Helpers.make_image`` in picamera2 (``picamera2/request.py``) decodes it with PIL's
raw mode ``"BGR"``. The array is reversed along the channels here to give RGB.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from appliance.capture.frame import Frame
from appliance.capture.source import SourceError, SourceFault

_log = logging.getLogger(__name__)

INSTALL_HINT = "picamera2 is not installed: apt install python3-picamera2 on Raspberry Pi OS"


class Picamera2Source:
    """A Pi camera read with picamera2's ``capture_array`` from the main stream."""

    def __init__(self, camera_index: int = 0, *, width: int = 0, height: int = 0,
                 fps: float = 0.0, read_timeout_s: float = 2.0, preview: bool = False,
                 camera_factory: Callable[[int], Any] | None = None) -> None:
        if camera_index < 0:
            raise SourceError(f"picamera2 source: camera index {camera_index} is negative")
        if bool(width) != bool(height):
            raise SourceError(
                f"picamera2 source: width and height must both be set or both be 0, got "
                f"{width}x{height}"
            )
        self.camera_index = camera_index
        self.source_id = f"picamera2:{camera_index}"
        self.width, self.height, self.fps = width, height, fps
        self.read_timeout_s = read_timeout_s
        self.preview = preview  # run picamera2's DRM preview (the picamera2 display sink)
        self._factory = camera_factory
        self._camera: Any = None
        self._seq = 0

    def open(self) -> None:
        """Configure and start the camera (no-op when open).

        SourceError when picamera2 is missing; SourceFault when the camera cannot start.
        """
        if self._camera is not None:
            return
        factory = self._factory or _picamera2_class()
        try:
            camera = factory(self.camera_index)
        except Exception as exc:  # picamera2 raises IndexError, RuntimeError... for no camera
            raise SourceFault(
                f"cannot open camera {self.camera_index} ({type(exc).__name__}: {exc}); is the "
                "ribbon cable seated and the camera listed by 'rpicam-hello --list-cameras'?"
            ) from exc
        try:
            camera.configure(camera.create_video_configuration(**self._configuration()))
            if self.preview:
                # The camera picture goes to HDMI through DRM; the display sink only adds
                # the annotations with set_overlay.
                camera.start_preview(_drm_preview())
            camera.start()
        except Exception as exc:
            _close_quietly(camera, self.source_id)
            raise SourceFault(
                f"cannot start camera {self.camera_index} ({type(exc).__name__}: {exc})"
            ) from exc
        self._camera = camera

    @property
    def camera(self) -> Any:
        """The open Picamera2 object (None when closed): the picamera2 display sink's target."""
        return self._camera

    def read(self) -> Frame:
        """The next frame in RGB; SourceFault when the camera gives none."""
        if self._camera is None:
            raise SourceFault(f"{self.source_id} is not open")
        try:
            # A number for wait is a timeout in recent picamera2; older ones just wait.
            array = self._camera.capture_array("main", wait=self.read_timeout_s)
        except Exception as exc:  # timeouts, a dislodged cable, libcamera errors
            raise SourceFault(
                f"{self.source_id}: capture failed ({type(exc).__name__}: {exc})"
            ) from exc
        rgb = _rgb888_to_rgb(array, self.source_id)
        self._seq += 1
        return Frame(image=rgb, seq=self._seq, timestamp=time.monotonic(),
                     source=self.source_id, pixel_format="RGB888")

    def close(self) -> None:
        """Stop and close the camera (idempotent; safe after a failed open)."""
        camera, self._camera = self._camera, None
        if camera is not None:
            _close_quietly(camera, self.source_id)

    def _configuration(self) -> dict[str, Any]:
        """Arguments of create_video_configuration; only what is set is asked for."""
        main: dict[str, Any] = {"format": "RGB888"}
        if self.width and self.height:
            main["size"] = (self.width, self.height)
        controls: dict[str, Any] = {"FrameRate": self.fps} if self.fps else {}
        # queue=False: capture_array waits for a new frame instead of returning a queued one.
        return {"main": main, "queue": False, "controls": controls}


def _picamera2_class() -> Callable[[int], Any]:
    """Import picamera2 now, or explain how to install it."""
    try:
        import picamera2  # optional: Raspberry Pi OS only
    except ImportError as exc:
        raise SourceError(INSTALL_HINT) from exc
    camera_class: Callable[[int], Any] = picamera2.Picamera2
    return camera_class


def _drm_preview() -> Any:
    """picamera2's DRM preview kind (full screen on HDMI, no X server)."""
    try:
        from picamera2 import Preview
    except ImportError as exc:
        raise SourceError(INSTALL_HINT) from exc
    return Preview.DRM


def _rgb888_to_rgb(array: Any, where: str) -> np.ndarray:
    """picamera2 "RGB888" (B, G, R in memory) to a contiguous RGB array."""
    if (not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 3
            or array.shape[2] != 3 or array.size == 0):
        shape = getattr(array, "shape", None)
        raise SourceFault(f"{where}: unusable frame (shape {shape}); expected RGB888 (H, W, 3)")
    return np.ascontiguousarray(array[:, :, ::-1])


def _close_quietly(camera: Any, where: str) -> None:
    """Stop then close; a camera that fails to stop is still closed, and the error logged."""
    for step in ("stop", "close"):
        try:
            getattr(camera, step)()
        except Exception as exc:  # closing must release what it can, and say what failed
            _log.warning("%s: %s failed: %s: %s", where, step, type(exc).__name__, exc)
