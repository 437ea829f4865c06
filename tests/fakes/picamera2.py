"""A stand-in for the ``picamera2`` module, following its documented API.

``Picamera2(camera_num, tuning=None)`` raises IndexError when there is no such camera (as
picamera2 does when indexing its camera list); ``tuning`` (a tuning file's dict or a file
name) is kept as the camera's tuning; ``create_video_configuration(main=..., queue=...,
controls=..., ...)`` returns a configuration dict; ``configure`` refuses a started
camera; ``start``/``stop``; ``capture_array(name="main", wait=None)`` returns the
frame in the configured format; ``close`` may be called again. For ``"RGB888"`` the
array holds B, G, R in that order (libcamera's little-endian naming), for
``"BGR888"`` R, G, B.

``capture_metadata(wait=None)`` returns a frame's metadata: ``ExposureTime`` (µs, whole
sensor lines, capped by the frame duration ``1e6 / FrameRate``) and ``AnalogueGain``
(clamped to the sensor's range) — the manual values from the configuration's controls
(``AeEnable`` False, ``ExposureTime``, ``AnalogueGain``), or the automatic ones — and
``ColourGains`` (red, blue): the configuration's with ``AwbEnable`` False, else the AWB's.

A :class:`CameraRig` describes the cameras plugged in and what they see, and can be
told to raise mid-stream; :meth:`CameraRig.module` builds a module object to put in
``sys.modules["picamera2"]``.
"""

from __future__ import annotations

import enum
import types
from typing import Any

import numpy as np


class CameraRig:
    """The cameras attached and the scene they show (RGB), plus scripted failures."""

    def __init__(self, scene: np.ndarray, *, cameras: int = 1) -> None:
        self.scene = scene
        self.cameras = cameras
        # The sensor: exposure in whole lines, its limits, and the analogue gain range.
        self.line_us = 14.0
        self.exposure_limits_us = (30, 600_000)
        self.gain_limits = (1.0, 16.0)
        self.auto_exposure_us = 20_000  # what the AGC/AEC picks on this scene
        self.auto_gain = 2.0
        self.colour_gain_limits = (0.0, 32.0)  # what the ISP applies
        self.auto_colour_gains = (1.9, 1.6)  # what the AWB picks on this scene
        self.fail_at: dict[int, BaseException] = {}  # capture number -> error to raise
        self.made: list[FakePicamera2] = []
        self.captures = 0

    def fail_capture(self, number: int, error: BaseException) -> None:
        """The ``number``-th capture (1-based, over all cameras) raises ``error``."""
        self.fail_at[number] = error

    def camera(self, camera_num: int = 0, tuning: Any = None) -> FakePicamera2:
        """Use as ``camera_factory`` (or via :meth:`module`)."""
        cam = FakePicamera2(camera_num, rig=self, tuning=tuning)
        self.made.append(cam)
        return cam

    def module(self) -> types.ModuleType:
        """A ``picamera2`` module whose ``Picamera2`` opens cameras of this rig."""
        module = types.ModuleType("picamera2")
        rig = self

        class Picamera2(FakePicamera2):
            def __init__(self, camera_num: int = 0, tuning: Any = None) -> None:
                super().__init__(camera_num, rig=rig, tuning=tuning)
                rig.made.append(self)

        module.Picamera2 = Picamera2  # type: ignore[attr-defined]
        module.Preview = Preview  # type: ignore[attr-defined]
        return module


class Preview(enum.Enum):
    """picamera2's preview kinds."""

    NULL = 0
    DRM = 1
    QT = 2
    QTGL = 3


class FakePicamera2:
    """One camera of a :class:`CameraRig`."""

    def __init__(self, camera_num: int = 0, *, rig: CameraRig, tuning: Any = None) -> None:
        if not 0 <= camera_num < rig.cameras:
            raise IndexError("list index out of range")
        self.camera_num = camera_num
        self.tuning = tuning  # None: the sensor's default tuning file
        self._rig = rig
        self.camera_config: dict[str, Any] | None = None
        self.started = False
        self.closed = 0
        self.stopped = 0
        self.waits: list[Any] = []
        self.asked: dict[str, Any] = {}  # the main and controls create_video_configuration got
        self.preview: Any = None
        self.overlays: list[np.ndarray] = []

    def create_video_configuration(self, main: dict[str, Any] | None = None,
                                   lores: dict[str, Any] | None = None,
                                   raw: dict[str, Any] | None = None, transform: Any = None,
                                   colour_space: Any = None, buffer_count: int = 6,
                                   controls: dict[str, Any] | None = None,
                                   display: str | None = "main", encode: str | None = "main",
                                   queue: bool = True, sensor: dict[str, Any] | None = None,
                                   use_case: str = "video") -> dict[str, Any]:
        main = dict(main or {})
        self.asked = {"main": dict(main), "controls": dict(controls or {})}
        h, w = self._rig.scene.shape[:2]  # picamera2 picks a size when none is asked for
        return {"use_case": use_case, "buffer_count": buffer_count, "queue": queue,
                "controls": dict(controls or {}),
                "main": {"format": main.get("format", "XBGR8888"),
                         "size": tuple(main.get("size", (w, h)))}}

    def configure(self, camera_config: dict[str, Any]) -> None:
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        self.camera_config = camera_config

    def start_preview(self, preview: Any = None, **kwargs: Any) -> None:
        if self.preview is not None:
            raise RuntimeError("An event loop is already running")
        self.preview = preview

    def set_overlay(self, overlay: np.ndarray | None) -> None:
        if self.preview is None:
            raise RuntimeError("Preview window has not been started")  # nothing to draw on
        if overlay is not None:
            if overlay.ndim != 3 or overlay.shape[2] != 4 or overlay.dtype != np.uint8:
                raise RuntimeError("Overlay must be a 4-channel uint8 array")
            self.overlays.append(overlay.copy())

    def start(self) -> None:
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        self.started = True

    def capture_array(self, name: str = "main", wait: Any = None) -> np.ndarray:
        self.waits.append(wait)
        if not self.started or self.camera_config is None:
            raise RuntimeError("Camera is not running")
        self._rig.captures += 1
        error = self._rig.fail_at.pop(self._rig.captures, None)
        if error is not None:
            raise error
        stream = self.camera_config[name]
        w, h = stream["size"]
        rgb = _resize_nearest(self._rig.scene, w, h)
        if stream["format"] == "RGB888":
            return np.ascontiguousarray(rgb[:, :, ::-1])  # B, G, R in memory
        if stream["format"] == "BGR888":
            return rgb.copy()
        raise RuntimeError(f"Format {stream['format']} not supported by the fake")

    def capture_metadata(self, wait: Any = None) -> dict[str, Any]:
        if not self.started or self.camera_config is None:
            raise RuntimeError("Camera is not running")
        rig = self._rig
        controls = self.camera_config.get("controls", {})
        manual = controls.get("AeEnable", True) is False
        exposure = float(controls["ExposureTime"]) if manual and "ExposureTime" in controls \
            else float(rig.auto_exposure_us)
        lo, hi = rig.exposure_limits_us
        if controls.get("FrameRate"):
            hi = min(hi, int(1e6 / float(controls["FrameRate"])))
        lines = round(min(max(exposure, lo), hi) / rig.line_us)
        gain = float(controls["AnalogueGain"]) if manual and "AnalogueGain" in controls \
            else rig.auto_gain
        glo, ghi = rig.gain_limits
        # Colour gains: the fixed ones with AWB off (clamped to the ISP's range), else what
        # the AWB picks on this scene.
        fixed = controls.get("AwbEnable", True) is False and "ColourGains" in controls
        clo, chi = rig.colour_gain_limits
        colour = (tuple(min(max(float(g), clo), chi) for g in controls["ColourGains"])
                  if fixed else rig.auto_colour_gains)
        return {"ExposureTime": int(lines * rig.line_us), "AnalogueGain": min(max(gain, glo), ghi),
                "AeLocked": manual, "ColourGains": colour,
                "FrameDuration": int(1e6 / float(controls.get("FrameRate", 30.0)))}

    def stop(self) -> None:
        self.stopped += 1
        self.started = False

    def close(self) -> None:
        self.closed += 1
        self.started = False


def _resize_nearest(rgb: np.ndarray, w: int, h: int) -> np.ndarray:
    rows = np.arange(h) * rgb.shape[0] // h
    cols = np.arange(w) * rgb.shape[1] // w
    return rgb[rows][:, cols]
