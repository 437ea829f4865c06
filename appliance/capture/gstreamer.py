"""Cameras through a GStreamer pipeline (``gstreamer:PIPELINE``), e.g. CSI cameras on Jetson.

The pipeline must end in an ``appsink`` that receives 8-bit BGR, for example::

    nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1920,height=1080,framerate=30/1
    ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR
    ! appsink drop=true max-buffers=1

OpenCV must be built with GStreamer: the opencv-python wheels from PyPI are not, the
OpenCV that JetPack installs (python3-opencv) is.
"""

from __future__ import annotations

import re
import time

import cv2

from appliance.capture.frame import Frame
from appliance.capture.source import SourceError, SourceFault
from appliance.capture.v4l2 import (
    CaptureFactory,
    VideoCaptureLike,
    opencv_message,
    read_rgb,
    set_read_timeout,
)

NO_GSTREAMER_HINT = (
    "this OpenCV has no GStreamer support (the opencv-python wheels from PyPI are built "
    "without it): on Jetson use JetPack's OpenCV (apt install python3-opencv, from JetPack) "
    "and remove opencv-python installed with pip, or use a v4l2: source"
)

_ENTRY = re.compile(r"^(?P<indent>\s*)(?P<key>[^:]+):\s*(?P<value>.*)$")


def gstreamer_available(build_info: str) -> bool:
    """Whether ``cv2.getBuildInformation()`` text says GStreamer is built in (Video I/O).

    Handles both layouts OpenCV has used: ``GStreamer: YES (1.16.3)`` on one line, and
    an empty ``GStreamer:`` followed by indented ``base: YES (...)`` lines.
    """
    lines = build_info.splitlines()
    for i, line in enumerate(lines):
        m = _ENTRY.match(line)
        if not (m and m["key"].strip() == "Video I/O"):
            continue
        return _gstreamer_in_section(lines[i + 1:], len(m["indent"]))
    return False


def _gstreamer_in_section(lines: list[str], section_indent: int) -> bool:
    """Look for the GStreamer entry among the lines indented under a section header."""
    for j, line in enumerate(lines):
        m = _ENTRY.match(line)
        if not line.strip():
            continue
        if m is None or len(m["indent"]) <= section_indent:
            return False  # the next section: no GStreamer entry in Video I/O
        if m["key"].strip() != "GStreamer":
            continue
        if m["value"].strip():
            return m["value"].strip().upper().startswith("YES")
        return _sub_entries_say_yes(lines[j + 1:], len(m["indent"]))
    return False


def _sub_entries_say_yes(lines: list[str], entry_indent: int) -> bool:
    """Older layout: ``GStreamer:`` then deeper lines such as ``base: YES (1.14.5)``."""
    found = False
    for line in lines:
        m = _ENTRY.match(line)
        if m is None or len(m["indent"]) <= entry_indent:
            break
        if not m["value"].strip().upper().startswith("YES"):
            return False
        found = True
    return found


def ends_in_appsink(pipeline: str) -> bool:
    """Whether the last element of a gst-launch style pipeline is an ``appsink``."""
    last = pipeline.rsplit("!", 1)[-1].split()
    return bool(last) and last[0] == "appsink"


class GstreamerSource:
    """Frames from a GStreamer pipeline ending in an appsink, read through OpenCV."""

    def __init__(self, pipeline: str, *, read_timeout_s: float = 2.0,
                 capture_factory: CaptureFactory = cv2.VideoCapture,
                 build_info: str | None = None) -> None:
        pipeline = " ".join(pipeline.split())
        if not pipeline:
            raise SourceError("gstreamer source: the pipeline is empty")
        if not ends_in_appsink(pipeline):
            raise SourceError(
                "gstreamer source: the pipeline must end with an appsink that receives BGR, "
                f"e.g. '... ! videoconvert ! video/x-raw,format=BGR ! appsink drop=true "
                f"max-buffers=1'; got '... {pipeline[-60:]}'"
            )
        self.pipeline = pipeline
        self.source_id = f"gstreamer:{pipeline}"
        self.read_timeout_s = read_timeout_s
        self._factory = capture_factory
        self._build_info = build_info
        self._cap: VideoCaptureLike | None = None
        self._seq = 0

    def open(self) -> None:
        """Start the pipeline (no-op when open); SourceError without GStreamer."""
        if self._cap is not None:
            return
        info = self._build_info if self._build_info is not None else cv2.getBuildInformation()
        if not gstreamer_available(info):
            raise SourceError(f"gstreamer source: {NO_GSTREAMER_HINT}")
        try:
            cap = self._factory(self.pipeline, cv2.CAP_GSTREAMER)
        except cv2.error as exc:
            raise SourceFault(
                f"cannot start the GStreamer pipeline: {opencv_message(exc)}"
            ) from exc
        if not cap.isOpened():
            cap.release()
            raise SourceFault(
                "cannot start the GStreamer pipeline (camera absent or busy, or an element "
                "is missing: try it with gst-launch-1.0, replacing the appsink by fakesink)"
            )
        set_read_timeout(cap, self.read_timeout_s, "gstreamer")
        self._cap = cap

    def read(self) -> Frame:
        """The next frame in RGB; SourceFault when the pipeline gives none."""
        if self._cap is None:
            raise SourceFault("the GStreamer pipeline is not open")
        rgb = read_rgb(self._cap, "gstreamer")
        self._seq += 1
        # The appsink hands over BGR whatever the camera sent; that is what we know.
        return Frame(image=rgb, seq=self._seq, timestamp=time.monotonic(),
                     source=self.source_id, pixel_format="BGR")

    def close(self) -> None:
        """Stop the pipeline (idempotent; safe after a failed open)."""
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()
